"""64 clients at once, 1,000+ mixed calls with CreateVolume retried under the same ClientToken
and every client fighting over a few shared volumes: no 5xx, one volume per token, and no
volume attached twice — in the answers, in the store and in the QEMU VMs."""

from __future__ import annotations

from pathlib import Path

from tests.load_harness import (
    SHARED_VOLUMES,
    double_attaches,
    duplicate_tokens,
    load_lab,
    make_shared,
    run_load,
    settle_attachments,
)

CLIENTS = 64
CALLS = 1100


def test_64_clients_get_no_5xx_no_duplicate_volume_and_no_double_attach(tmp_path: Path) -> None:
    with load_lab(tmp_path) as lab:
        shared = make_shared(lab, SHARED_VOLUMES)
        result, made = run_load(
            lab.server.url, clients=CLIENTS, calls=CALLS, shared=shared, instances=lab.instances
        )
        settle_attachments(lab)
        duplicates = duplicate_tokens(lab.server)
        doubles = double_attaches(lab, result, shared)
    print(result.summary())
    assert result.calls >= 1000
    assert result.server_errors == []
    assert result.token_mismatches == []
    assert duplicates == []
    assert len(set(made)) == len(made) == result.volumes_created
    assert doubles == []
    if lab.instances:
        assert result.attach_wins, "no client managed to attach a shared volume"
