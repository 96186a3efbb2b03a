"""Snapshots written and read block by block (the EBS direct API), on the real block store.

A snapshot started here is an EC2 snapshot like any other (`pending`, then `completed` or
`error`), with volume id `vol-ffffffff` as AWS shows it: DescribeSnapshots lists it,
CreateVolume restores it, DeleteSnapshot releases its blocks. Writing and reading are
composed here over one access policy.
"""

from __future__ import annotations

from ebsemu.direct.access import SnapshotAccess
from ebsemu.direct.reader import DirectReader
from ebsemu.direct.writer import DirectWriter
from ebsemu.service.core import Core


class DirectService:
    def __init__(self, core: Core, minute_seconds: float = 60.0) -> None:
        """``minute_seconds``: the length of a StartSnapshot Timeout minute."""
        access = SnapshotAccess(core)
        self.writer = DirectWriter(core, access, minute_seconds)
        self.reader = DirectReader(core, access)
