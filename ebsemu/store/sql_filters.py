"""EC2 filters translated to SQL conditions, one table of filter names per resource.

Each filter name maps to a SQL expression that yields the filter's value as text, the way the
wire shows it ('true'/'false', '42', '2024-01-02T03:04:05.000Z'), so every filter is one string
match: `=` when the value has no wildcard (indexable), GLOB otherwise (case-sensitive, as AWS is).
Tag and attachment filters become `id IN (subquery)` so they use their tables' indexes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ebsemu.store.base import Filter, UnknownFilterError


def _bool(column: str) -> str:
    return f"(CASE WHEN {column} <> 0 THEN 'true' ELSE 'false' END)"


VOLUME_FILTERS: Mapping[str, str] = {
    "volume-id": "v.id",
    "status": "v.state",
    "size": "CAST(v.size_gib AS TEXT)",
    "snapshot-id": "COALESCE(v.snapshot_id, '')",
    "availability-zone": "v.zone",
    "availability-zone-id": "v.zone_id",
    "create-time": "v.create_time",
    "encrypted": _bool("v.encrypted"),
    "fast-restored": "'false'",
    "multi-attach-enabled": _bool("v.multi_attach"),
    "volume-type": "v.volume_type",
    "operator.managed": "'false'",
    "operator.principal": "''",
}

ATTACHMENT_FILTERS: Mapping[str, str] = {
    "attachment.attach-time": "a.attach_time",
    "attachment.delete-on-termination": _bool("a.delete_on_termination"),
    "attachment.device": "a.device",
    "attachment.instance-id": "a.instance_id",
    "attachment.status": "a.state",
}

BLOCK_DEVICE_FILTERS: Mapping[str, str] = {
    "block-device-mapping.attach-time": "a.attach_time",
    "block-device-mapping.delete-on-termination": _bool("a.delete_on_termination"),
    "block-device-mapping.device-name": "a.device",
    "block-device-mapping.status": "a.state",
    "block-device-mapping.volume-id": "a.volume_id",
}

INSTANCE_FILTERS: Mapping[str, str] = {
    "instance-id": "i.id",
    "availability-zone": "i.zone",
    "instance-state-name": "i.state",
    "instance-state-code": (
        "(CASE i.state WHEN 'pending' THEN '0' WHEN 'running' THEN '16' "
        "WHEN 'shutting-down' THEN '32' WHEN 'terminated' THEN '48' "
        "WHEN 'stopping' THEN '64' ELSE '80' END)"
    ),
    "owner-id": "i.owner_id",
    "launch-time": "i.launch_time",
}


@dataclass(frozen=True)
class Related:
    """Filters on rows of another table: `id IN (<source> WHERE <match>)`."""

    source: str
    columns: Mapping[str, str]


VOLUME_ATTACHMENTS = Related("SELECT a.volume_id FROM attachments a", ATTACHMENT_FILTERS)
INSTANCE_DEVICES = Related("SELECT a.instance_id FROM attachments a", BLOCK_DEVICE_FILTERS)

SNAPSHOT_FILTERS: Mapping[str, str] = {
    "snapshot-id": "s.id",
    "volume-id": "s.volume_id",
    "status": "s.state",
    "progress": "(s.progress || '%')",
    "description": "s.description",
    "encrypted": _bool("s.encrypted"),
    "owner-id": "s.owner_id",
    "owner-alias": "''",
    "start-time": "s.start_time",
    "storage-tier": "'standard'",
    "transfer-type": "'standard'",
    "volume-size": "CAST(s.volume_size_gib AS TEXT)",
}

TAG_FILTERS: Mapping[str, str] = {
    "key": "t.key",
    "value": "t.value",
    "resource-id": "t.resource_id",
    "resource-type": "t.resource_type",
}


_GLOB_SPECIAL = {"*": "[*]", "?": "[?]", "[": "[[]"}  # as literal characters in a GLOB


def glob_pattern(value: str) -> tuple[str, str | None]:
    """An EC2 filter value as (GLOB pattern, literal): `*` and `?` are wildcards, `\\` escapes
    the next character (`\\*`, `\\?`, `\\\\`). ``literal`` is the unescaped value when it has no
    wildcard (then `=` matches it, using the index), else None."""
    pattern: list[str] = []
    literal: list[str] = []
    wild = False
    chars = iter(value)
    for ch in chars:
        if ch == "\\":
            nxt = next(chars, "\\")
            pattern.append(_GLOB_SPECIAL.get(nxt, nxt))
            literal.append(nxt)
        elif ch in "*?":
            pattern.append(ch)
            wild = True
        else:
            pattern.append(_GLOB_SPECIAL.get(ch, ch))
            literal.append(ch)
    return "".join(pattern), None if wild else "".join(literal)


def _match(expr: str, values: Sequence[str], params: list[object]) -> str:
    terms: list[str] = []
    for value in values:
        pattern, literal = glob_pattern(value)
        if literal is None:
            terms.append(f"{expr} GLOB ?")
            params.append(pattern)
        else:
            terms.append(f"{expr} = ?")
            params.append(literal)
    # A filter named without values constrains nothing: EC2 reads it as "has this attribute"
    # (for tag:<key>, attachment.*: has such a tag, has an attachment).
    return "(" + " OR ".join(terms) + ")" if terms else "TRUE"


def filter_sql(
    filters: Sequence[Filter],
    columns: Mapping[str, str],
    id_column: str,
    params: list[object],
    *,
    related: Related | None = None,
    tags: bool = True,
    tag_owner: str | None = None,
) -> list[str]:
    """SQL conditions (ANDed) for ``filters``; appends bind values to ``params``.

    With ``tag_owner``, tag filters match only the tags that account put on (a snapshot
    shared with it shows none of its owner's tags).
    """
    conditions: list[str] = []
    owned = ""
    if tag_owner is not None:
        owned = "t.owner_id = ? AND "
    for flt in filters:
        name = flt.name
        if name in columns:
            conditions.append(_match(columns[name], flt.values, params))
        elif related is not None and name in related.columns:
            inner = _match(related.columns[name], flt.values, params)
            conditions.append(f"{id_column} IN ({related.source} WHERE {inner})")
        elif tags and name.startswith("tag:") and len(name) > 4:
            params += [name[4:], *([tag_owner] if tag_owner is not None else [])]
            inner = _match("t.value", flt.values, params)
            conditions.append(
                f"{id_column} IN (SELECT t.resource_id FROM tags t "
                f"WHERE t.key = ? AND {owned}{inner})"
            )
        elif tags and name == "tag-key":
            params += [tag_owner] if tag_owner is not None else []
            inner = _match("t.key", flt.values, params)
            conditions.append(
                f"{id_column} IN (SELECT t.resource_id FROM tags t WHERE {owned}{inner})"
            )
        else:
            raise UnknownFilterError(name)
    return conditions
