"""Parsing what ``tgtadm --op show`` prints (it has no machine-readable output format).

``--mode target`` prints, per target, indented sections::

    Target 1: iqn.2010-10.org.ebsemu:vol-0123456789abcdef0
        System information:
            Driver: iscsi
            State: ready
        I_T nexus information:
            I_T nexus: 2
                Initiator: iqn.2008-11.org.linux-kvm alias: host
                Connection: 0
                    IP Address: 127.0.0.1
        LUN information:
            LUN: 1
                Type: disk
                Backing store type: rdwr
                Backing store path: /srv/ebs/volumes/vol-…/seg-0000
        Account information:
            ebs-1f2e3d4c5b6a7980
            mutual-user (outgoing)
        ACL information:
            127.0.0.1
            iqn.2024-01.example:host1

The ACL list mixes initiator addresses and initiator names; names are told apart by their
iqn./eui./naa. prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TARGET = re.compile(r"Target (\d+): (\S+)")
_NAME_PREFIXES = ("iqn.", "eui.", "naa.")


@dataclass(frozen=True)
class LiveLun:
    lun: int
    bs_type: str
    path: str


@dataclass
class LiveTarget:
    """One target as tgtd reports it."""

    tid: int
    iqn: str
    luns: dict[int, LiveLun] = field(default_factory=dict)
    accounts: list[str] = field(default_factory=list)  # incoming CHAP users bound to it
    addresses: list[str] = field(default_factory=list)  # ACL: initiator addresses
    names: list[str] = field(default_factory=list)  # ACL: initiator names
    sessions: int = 0  # I_T nexuses (logged-in initiators)


def is_initiator_name(entry: str) -> bool:
    return entry.startswith(_NAME_PREFIXES)


def parse_targets(text: str) -> dict[str, LiveTarget]:
    """Targets by IQN from ``tgtadm --lld iscsi --op show --mode target``."""
    targets: dict[str, LiveTarget] = {}
    target: LiveTarget | None = None
    section = ""
    lun: dict[str, str] = {}

    def close_lun() -> None:
        if target is not None and "LUN" in lun:
            number = int(lun["LUN"])
            target.luns[number] = LiveLun(
                number, lun.get("Backing store type", ""), lun.get("Backing store path", "")
            )
        lun.clear()

    for raw in text.splitlines():
        if not raw.strip():
            continue
        depth = (len(raw) - len(raw.lstrip(" "))) // 4
        line = raw.strip()
        if depth == 0:
            close_lun()
            match = _TARGET.fullmatch(line)
            target = None
            if match:
                target = LiveTarget(int(match.group(1)), match.group(2))
                targets[target.iqn] = target
            continue
        if target is None:
            continue
        if depth == 1:
            close_lun()
            section = line.rstrip(":")
            continue
        if section == "LUN information":
            key, _, value = line.partition(":")
            if depth == 2 and key == "LUN":
                close_lun()
            lun[key.strip()] = value.strip()
        elif section == "I_T nexus information" and depth == 2 and line.startswith("I_T nexus:"):
            target.sessions += 1
        elif section == "Account information" and depth == 2:
            if not line.endswith("(outgoing)"):
                target.accounts.append(line)
        elif section == "ACL information" and depth == 2:
            (target.names if is_initiator_name(line) else target.addresses).append(line)
    close_lun()
    return targets


def parse_accounts(text: str) -> set[str]:
    """User names from ``tgtadm --lld iscsi --op show --mode account``."""
    users = set()
    for raw in text.splitlines():
        line = raw.strip()
        if raw.startswith(" ") and line:
            users.add(line.split()[0])
    return users


def parse_system(text: str) -> tuple[dict[str, str], set[str]]:
    """(LLD name -> state, backing store types) from ``tgtadm --op show --mode sys``."""
    llds: dict[str, str] = {}
    stores: set[str] = set()
    section = ""
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if not raw.startswith(" "):
            section = raw.strip().rstrip(":")
            continue
        line = raw.strip()
        if section == "LLDs":
            name, _, state = line.partition(":")
            llds[name.strip()] = state.strip()
        elif section == "Backing stores":
            stores.add(line.split()[0])
    return llds, stores
