"""/metrics reads the block store's figures at most every [blockstore] metrics_refresh_seconds."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.api_support import FAST, new_snapshot, new_volume
from tests.server import TEST_CONFIG, ServerProcess
from tests.test_api_metrics import scrape
from tests.test_api_snapshots import BLOCK, write_blocks


def test_block_store_gauges_are_served_from_the_cached_figure_until_it_is_refreshed(
    tmp_path: Path,
) -> None:
    server = ServerProcess(
        tmp_path / "data", TEST_CONFIG + "\n[blockstore]\nmetrics_refresh_seconds = 86400\n"
    )
    server.start()
    try:
        first = scrape(server)
        ec2: Any = server.client()
        volume_id = new_volume(ec2, Size=1)
        write_blocks(server, volume_id, {0: os.urandom(BLOCK)})
        snapshot_id = new_snapshot(ec2, volume_id)
        ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snapshot_id], WaiterConfig=FAST)
        later = scrape(server)
        server.restart()
        fresh = scrape(server)
    finally:
        server.stop()
    assert first.value("ebsemu_blockstore_blocks") == 0
    assert later.value("ebsemu_snapshots", state="completed") == 1
    assert later.value("ebsemu_blockstore_blocks") == 0  # the figure read at the first scrape
    assert fresh.value("ebsemu_blockstore_blocks") == 1
    assert fresh.value("ebsemu_blockstore_bytes") == BLOCK
