"""Crash safety, end to end: the server is killed at every named job step (EBSEMU_FAULT) and at
random moments while boto3 drives create/write/snapshot/restore/delete work and attaches and
detaches volumes to a diskless QEMU VM (where QEMU is installed), and restarted
each time. After every restart everything settles within seconds into a state EC2 allows, the
store and the disks agree (no directory, view or block without its record, no record without
its data), and every completed snapshot restores byte-identical. The long run is
`python -m tests.crash_harness --rounds N`."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.crash_harness import campaign, steps_for

RANDOM_ROUNDS = 3


@pytest.mark.timeout(1200)
def test_killed_at_every_step_and_at_random_the_server_always_recovers_consistent(
    tmp_path: Path,
) -> None:
    harness = campaign(tmp_path, rounds=RANDOM_ROUNDS, seed=7)
    tally = harness.tally
    print(tally.summary())
    assert tally.inconsistencies == [], "\n".join(harness.journal[-60:])
    assert set(tally.kills_at_step) == set(steps_for(harness))
    assert tally.kills_random == RANDOM_ROUNDS
    assert tally.restores_verified > 0
