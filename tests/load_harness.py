"""Concurrent load: many clients at once, each a thread sending signed EC2 Query requests.

Every client creates volumes with a ClientToken and sends each CreateVolume again with the same
token (as an SDK does when it retries a call whose answer was lost), describes, snapshots and
deletes its own volumes, and fights every other client over a few shared volumes, trying to
attach them to the instances. Afterwards it checks: no 5xx (or dropped connection), every
retry of a token answered with the same volume and the store holds one volume per token, and no
shared volume was ever attached twice (not in the answers, not in the store, not in the VMs).

`python -m tests.load_harness --clients 64 --calls 5000` runs a long load; tests/test_load.py a
short one.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ebsemu.service.instances import instance_id
from tests.api_support import new_volume, poll, raw_request
from tests.server import TEST_CONFIG, ZONE, ServerProcess
from tests.vmm_fixtures import HAVE_QEMU, QemuVm, qmp, run, running_vm

VERSION = "2016-11-15"
VMM = "load-kvm"
SHARED_VOLUMES = 8
LAB_CONFIG = """
[vmm load-kvm]
driver = qemu
zone = {zone}
socket_dir = {sockets}
detach_timeout = 10
"""


@dataclass
class LoadResult:
    calls: int = 0
    retries_with_token: int = 0
    server_errors: list[str] = field(default_factory=list)
    client_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    token_mismatches: list[str] = field(default_factory=list)
    attach_wins: collections.Counter[str] = field(default_factory=collections.Counter)
    volumes_created: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def summary(self) -> str:
        errors = ", ".join(f"{k}={v}" for k, v in sorted(self.client_errors.items()))
        return "\n".join(
            [
                f"calls: {self.calls} ({self.retries_with_token} CreateVolume retries) "
                f"in {self.seconds:.1f} s",
                f"volumes created: {self.volumes_created}",
                f"5xx or dropped: {len(self.server_errors)}",
                f"4xx by code: {errors or 'none'}",
                f"ClientToken answered with another volume: {len(self.token_mismatches)}",
                f"shared volumes attached: {len(self.attach_wins)}, "
                f"most wins for one volume: {max(self.attach_wins.values(), default=0)}",
            ]
        )


class Client:
    """One simulated SDK user."""

    def __init__(self, url: str, result: LoadResult, rng: random.Random) -> None:
        self._url = url
        self._result = result
        self.rng = rng

    def call(self, action: str, **params: str) -> dict[str, Any] | None:
        """The response body's root element, or None for a 4xx (counted by its code)."""
        with self._result.lock:
            self._result.calls += 1
        try:
            response = raw_request(self._url, {"Action": action, "Version": VERSION, **params})
        except OSError as exc:
            with self._result.lock:
                self._result.server_errors.append(f"{action}: {exc}")
            return None
        if response.status >= 500:
            with self._result.lock:
                self._result.server_errors.append(f"{action}: HTTP {response.status}")
            return None
        if response.status >= 400:
            code, _ = response.error()
            with self._result.lock:
                self._result.client_errors[f"{action}:{code}"] += 1
            return None
        body: dict[str, Any] = next(iter(response.xml().values()))
        return body

    def create_volume(self) -> str | None:
        token = uuid.uuid4().hex
        params = {"AvailabilityZone": ZONE, "Size": "1", "ClientToken": token}
        first = self.call("CreateVolume", **params)
        if first is None:
            return None
        volume_id = str(first["volumeId"])
        for _ in range(self.rng.choice((0, 1, 1, 2))):
            with self._result.lock:
                self._result.retries_with_token += 1
            again = self.call("CreateVolume", **params)
            if again is not None and again["volumeId"] != volume_id:
                with self._result.lock:
                    self._result.token_mismatches.append(f"{token}: {volume_id} then {again}")
        with self._result.lock:
            self._result.volumes_created += 1
        return volume_id


def _client_run(
    url: str, result: LoadResult, seed: int, calls: int, shared: list[str], instances: list[str]
) -> list[str]:
    """One client's share of the calls; returns the volumes it created."""
    client = Client(url, result, random.Random(seed))
    own: list[str] = []
    budget = calls
    while budget > 0:
        kind = client.rng.random()
        if kind < 0.3 or not own:
            volume_id = client.create_volume()
            if volume_id:
                own.append(volume_id)
            budget -= 2
        elif kind < 0.5:
            client.call("DescribeVolumes", **{"VolumeId.1": client.rng.choice(own)})
            budget -= 1
        elif kind < 0.6:
            client.call("CreateSnapshot", VolumeId=client.rng.choice(own))
            budget -= 1
        elif kind < 0.85 and shared and instances:
            index = client.rng.randrange(len(shared))
            answer = client.call(
                "AttachVolume",
                VolumeId=shared[index],
                InstanceId=client.rng.choice(instances),
                Device=f"/dev/sd{chr(ord('f') + index)}",
            )
            if answer is not None:
                with result.lock:
                    result.attach_wins[shared[index]] += 1
            budget -= 1
        else:
            client.call("DescribeSnapshots", **{"Owner.1": "self", "MaxResults": "5"})
            budget -= 1
    return own


def run_load(
    url: str, *, clients: int, calls: int, shared: list[str], instances: list[str], seed: int = 1
) -> tuple[LoadResult, list[str]]:
    """``calls`` spread over ``clients`` threads at once; the result and every volume made."""
    result = LoadResult()
    per_client = max(1, calls // clients)
    barrier = threading.Barrier(clients)

    def one(n: int) -> list[str]:
        barrier.wait()
        return _client_run(url, result, seed * 1000 + n, per_client, shared, instances)

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        made = [v for volumes in pool.map(one, range(clients)) for v in volumes]
    result.seconds = time.monotonic() - began
    return result, made


def duplicate_tokens(server: ServerProcess) -> list[tuple[str, int]]:
    """ClientTokens the store holds more than one volume for."""
    rows = server.rows(
        "SELECT client_token, COUNT(*) FROM volumes WHERE client_token IS NOT NULL "
        "GROUP BY owner_id, client_token HAVING COUNT(*) > 1"
    )
    return [(str(r[0]), int(r[1])) for r in rows]


def attachments_per_volume(server: ServerProcess) -> dict[str, int]:
    rows = server.rows("SELECT volume_id, COUNT(*) FROM attachments GROUP BY volume_id")
    return {str(r[0]): int(r[1]) for r in rows}


@dataclass
class Lab:
    server: ServerProcess
    vms: list[QemuVm]
    instances: list[str]


@contextlib.contextmanager
def load_lab(work: Path, *, vms: int = 2, ports: int = 8) -> Iterator[Lab]:
    """A server whose zone has one QEMU VMM host with ``vms`` diskless VMs (none if QEMU is
    missing here)."""
    sockets = work / "qmp"
    sockets.mkdir(parents=True, exist_ok=True)
    limits = "[limits]\nmax_attachments_per_instance = 16\n"
    config = TEST_CONFIG.replace("[limits]\n", limits) + LAB_CONFIG.format(
        sockets=sockets, zone=ZONE
    )
    with contextlib.ExitStack() as stack:
        started = []
        if HAVE_QEMU:
            started = [
                stack.enter_context(running_vm(sockets, f"load{n}", ports=ports))
                for n in range(vms)
            ]
        server = ServerProcess(work / "data", config if started else TEST_CONFIG)
        stack.callback(server.stop)
        server.start()
        yield Lab(server, started, [instance_id(VMM, vm.name) for vm in started])


def disks_in_vm(vm: QemuVm, volume_ids: list[str]) -> set[str]:
    """Which of ``volume_ids`` the VM's QEMU holds a block node or device for now."""
    text = json.dumps(run(qmp(vm, "query-block")))
    return {v for v in volume_ids if v in text}


def make_shared(lab: Lab, count: int) -> list[str]:
    """Volumes every client tries to attach (none without VMs)."""
    if not lab.instances:
        return []
    ec2 = lab.server.client()
    return [new_volume(ec2) for _ in range(count)]


def settle_attachments(lab: Lab) -> None:
    """Wait until no attachment is `attaching` any more."""

    def settled() -> bool | None:
        [(n,)] = lab.server.rows("SELECT COUNT(*) FROM attachments WHERE state = 'attaching'")
        return True if n == 0 else None

    poll(settled, timeout=120)


def double_attaches(lab: Lab, result: LoadResult, shared: list[str]) -> list[str]:
    """Every sign of a shared volume attached more than once: in the answers, the store, the
    VMs."""
    found = [f"{v}: {n} AttachVolume successes" for v, n in result.attach_wins.items() if n > 1]
    per_volume = attachments_per_volume(lab.server)
    found += [f"{v}: {n} attachment records" for v, n in per_volume.items() if n > 1]
    holders: collections.Counter[str] = collections.Counter()
    for vm in lab.vms:
        holders.update(disks_in_vm(vm, shared))
    found += [f"{v}: in {n} VMs" for v, n in holders.items() if n > 1]
    if set(holders) != set(per_volume):
        found.append(f"VMs hold {sorted(holders)}, the store attaches {sorted(per_volume)}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.load_harness", description=__doc__)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ebsemu-load-") as work, load_lab(Path(work)) as lab:
        shared = make_shared(lab, SHARED_VOLUMES)
        result, _ = run_load(
            lab.server.url,
            clients=args.clients,
            calls=args.calls,
            shared=shared,
            instances=lab.instances,
            seed=args.seed,
        )
        settle_attachments(lab)
        duplicates = duplicate_tokens(lab.server)
        doubles = double_attaches(lab, result, shared)
    print(result.summary())
    print(f"ClientTokens with more than one volume in the store: {len(duplicates)}")
    print(f"double attaches: {len(doubles)}" + "".join(f"\n  - {d}" for d in doubles))
    bad = result.server_errors or result.token_mismatches or duplicates or doubles
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
