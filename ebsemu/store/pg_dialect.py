"""The store's SQL is written once, in the subset SQLite and PostgreSQL share; this module
rewrites the few SQLite forms it uses into PostgreSQL's:

- `?` placeholders become `$1`, `$2`, … (string literals are left alone);
- `x GLOB ?` becomes `x LIKE $n ESCAPE '\\'`, and its bound GLOB pattern a LIKE pattern
  (``glob_to_like``: `*` -> `%`, `?` -> `_`, `[c]` -> the character c; `%`, `_` and `\\`
  escaped), case-sensitive like GLOB;
- `INSERT OR REPLACE INTO t (cols)` becomes `INSERT … ON CONFLICT (t's key) DO UPDATE` of
  the other columns (``CONFLICT_KEYS`` names each table's key);
- `INSERT INTO t` of a table whose key PostgreSQL numbers (``SERIAL_KEYS``) returns that key,
  the cursor's ``lastrowid`` as in SQLite;
- `json_object(…)` (arguments without parentheses) becomes
  `CAST(json_build_object(…) AS TEXT)`, and SQLite's clock expression
  `CAST(strftime('%s', 'now') AS REAL)` the epoch of PostgreSQL's clock.

A statement is translated once and the translation cached; only the bound GLOB patterns are
rewritten per call.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The primary key of each table `INSERT OR REPLACE` writes to (what SQLite replaces on).
CONFLICT_KEYS: dict[str, tuple[str, ...]] = {
    "snapshot_blocks": ("snapshot_id", "block_index"),
    "direct_written_blocks": ("snapshot_id", "block_index"),
    "retired_client_tokens": ("owner_id", "client_token"),
}

# The key each table numbers itself (SQLite's rowid alias), returned by an INSERT.
SERIAL_KEYS: dict[str, str] = {
    "volumes": "seq",
    "snapshots": "seq",
    "instances": "seq",
    "volume_modifications": "seq",
    "fast_snapshot_restores": "seq",
    "jobs": "id",
}

_SQLITE_NOW = "CAST(strftime('%s', 'now') AS REAL)"
_PG_NOW = "CAST(extract(epoch FROM now()) AS DOUBLE PRECISION)"
_JSON_OBJECT = re.compile(r"\bjson_object\(([^()]*)\)")
_INSERT_OR_REPLACE = re.compile(r"INSERT OR REPLACE INTO (\w+) \(([^)]*)\)")
_INSERT_INTO = re.compile(r"\s*INSERT INTO (\w+)\b")
_TOKENS = re.compile(r"'(?:[^']|'')*'|\bGLOB\s+\?|\?")


@dataclass(frozen=True)
class Translation:
    sql: str
    glob_params: frozenset[int]  # indexes of the bound values that are GLOB patterns
    returns_rows: bool  # a query, or a statement with RETURNING
    returns_key: bool  # an INSERT made to return its row's key (the cursor's lastrowid)


def _like_literal(ch: str) -> str:
    return "\\" + ch if ch in "%_\\" else ch


def glob_to_like(pattern: str) -> str:
    """A GLOB pattern as made by ``sql_filters.glob_pattern`` (wildcards `*` and `?`, a
    literal special character as a one-character class `[c]`) as a LIKE pattern, escape `\\`."""
    out: list[str] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "*":
            out.append("%")
        elif ch == "?":
            out.append("_")
        elif ch == "[" and i + 2 < len(pattern) and pattern[i + 2] == "]":
            out.append(_like_literal(pattern[i + 1]))
            i += 3
            continue
        else:
            out.append(_like_literal(ch))
        i += 1
    return "".join(out)


def _upsert(match: re.Match[str]) -> str:
    table, columns = match.group(1), match.group(2)
    if table not in CONFLICT_KEYS:
        raise ValueError(f"no conflict key known for INSERT OR REPLACE into {table}")
    return f"INSERT INTO {table} ({columns})"


def _on_conflict(sql: str) -> str:
    match = _INSERT_OR_REPLACE.search(sql)
    if match is None:
        return sql
    table = match.group(1)
    keys = CONFLICT_KEYS.get(table, ())
    names = [column.strip() for column in match.group(2).split(",")]
    updates = ", ".join(f"{name} = EXCLUDED.{name}" for name in names if name not in keys)
    tail = f" ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {updates}"
    return _INSERT_OR_REPLACE.sub(_upsert, sql) + tail


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> Translation:
    sql = _on_conflict(sql).replace(_SQLITE_NOW, _PG_NOW)
    sql = _JSON_OBJECT.sub(r"CAST(json_build_object(\1) AS TEXT)", sql)
    out: list[str] = []
    globs: set[int] = set()
    count = 0
    last = 0
    for match in _TOKENS.finditer(sql):
        out.append(sql[last : match.start()])
        token = match.group(0)
        if token.startswith("'"):
            out.append(token)
        else:
            count += 1
            if token == "?":
                out.append(f"${count}")
            else:
                globs.add(count - 1)
                out.append(f"LIKE ${count} ESCAPE '\\'")
        last = match.end()
    out.append(sql[last:])
    translated = "".join(out)
    head = translated.lstrip().split(None, 1)[0].upper() if translated.strip() else ""
    returns_key = False
    insert = _INSERT_INTO.match(translated)
    if insert is not None and insert.group(1) in SERIAL_KEYS and " RETURNING " not in sql.upper():
        translated += f" RETURNING {SERIAL_KEYS[insert.group(1)]}"
        returns_key = True
    returns_rows = head in ("SELECT", "WITH", "VALUES") or " RETURNING " in translated.upper()
    return Translation(translated, frozenset(globs), returns_rows, returns_key)


def bind(translation: Translation, params: Sequence[Any]) -> list[Any]:
    """The values to bind to a translated statement."""
    if not translation.glob_params:
        return list(params)
    return [
        glob_to_like(value) if index in translation.glob_params else value
        for index, value in enumerate(params)
    ]


def changed_rows(status: str) -> int:
    """The row count of a command status (`UPDATE 3`, `INSERT 0 1`, `DELETE 0`)."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0
