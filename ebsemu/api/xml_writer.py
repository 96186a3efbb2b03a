"""Write EC2 Query XML responses from result dicts, driven by botocore's model.

A result is keyed by the output shape's member names (as boto3 returns them). Elements are
named by the member's ``locationName``; lists are a wrapper element holding one ``<item>`` (the
list member's ``locationName``) per element; members whose value is None are left out, the
others follow the result dict's order. Per shape, a plan of tags and writers is built once and
cached, and output is built with ``list.append`` and one ``join``: DescribeVolumes with
thousands of volumes goes through here.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from botocore.model import OperationModel, Shape

XMLNS: Final = "http://ec2.amazonaws.com/doc/2016-11-15/"
_DECLARATION: Final = '<?xml version="1.0" encoding="UTF-8"?>'

# Characters that must be escaped, plus those XML 1.0 cannot carry at all (control characters,
# lone surrogates, U+FFFE/U+FFFF), which become U+FFFD. CR is kept as a character reference, as
# a literal CR would be read back as LF.
_SPECIAL: Final = re.compile("[&<>\r\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_REPLACEMENTS: Final = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"}


def escape(text: str) -> str:
    """Text made safe as XML 1.0 character data."""
    if _SPECIAL.search(text) is None:
        return text
    return _SPECIAL.sub(lambda match: _REPLACEMENTS.get(match.group(), "\ufffd"), text)


class ResultShapeError(ValueError):
    """A result does not fit the operation's output shape (a programming error).

    ``path`` locates the offending value, e.g. ``['Volumes', 3, 'Stat']``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path: list[str | int] = []
        self.operation = ""

    def __str__(self) -> str:
        where = "".join(f"[{step}]" if isinstance(step, int) else f".{step}" for step in self.path)
        return f"{self.operation} result{where}: {self.reason}"


# --- plans ------------------------------------------------------------------------------------

Writer = Callable[["_Field", Any, list[str]], None]


@dataclass(slots=True)
class _Field:
    """How to write one value: a structure member or a list element."""

    open: str
    close: str
    empty: str
    write: Writer
    struct: _Struct | None = None
    item: _Field | None = None  # the element of a list


@dataclass(slots=True)
class _Struct:
    fields: dict[str, _Field] = field(default_factory=dict)  # by member name


def _type_error(expected: str, value: Any) -> ResultShapeError:
    return ResultShapeError(f"expected {expected}, got {type(value).__name__} {value!r:.80}")


def _write_string(spec: _Field, value: Any, out: list[str]) -> None:
    if not isinstance(value, str):
        raise _type_error("str", value)
    if not value:
        out.append(spec.empty)
    elif _SPECIAL.search(value) is None:
        out.append(spec.open + value + spec.close)
    else:
        out.append(spec.open + escape(value) + spec.close)


def _write_boolean(spec: _Field, value: Any, out: list[str]) -> None:
    if value is True:
        out.append(spec.open + "true" + spec.close)
    elif value is False:
        out.append(spec.open + "false" + spec.close)
    else:
        raise _type_error("bool", value)


def _write_integer(spec: _Field, value: Any, out: list[str]) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise _type_error("int", value)
    out.append(f"{spec.open}{value:d}{spec.close}")


def _write_float(spec: _Field, value: Any, out: list[str]) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise _type_error("float", value)
    out.append(f"{spec.open}{float(value)!r}{spec.close}")


def _write_timestamp(spec: _Field, value: Any, out: list[str]) -> None:
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise _type_error("timezone-aware datetime", value)
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    out.append(
        f"{spec.open}{value.year:04d}-{value.month:02d}-{value.day:02d}T{value.hour:02d}:"
        f"{value.minute:02d}:{value.second:02d}.{value.microsecond // 1000:03d}Z{spec.close}"
    )


def _write_blob(spec: _Field, value: Any, out: list[str]) -> None:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise _type_error("bytes", value)
    out.append(spec.open + base64.b64encode(value).decode("ascii") + spec.close)


def _write_structure(spec: _Field, value: Any, out: list[str]) -> None:
    assert spec.struct is not None
    out.append(spec.open)
    _write_members(spec.struct, value, out)
    out.append(spec.close)


def _write_list(spec: _Field, value: Any, out: list[str]) -> None:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        raise _type_error("list", value)
    if not value:
        out.append(spec.empty)
        return
    item = spec.item
    assert item is not None
    write = item.write
    out.append(spec.open)
    for index, element in enumerate(value):
        try:
            if element is None:
                raise ResultShapeError("a list element is None")
            write(item, element, out)
        except ResultShapeError as error:
            error.path.insert(0, index)
            raise
    out.append(spec.close)


def _write_members(plan: _Struct, value: Any, out: list[str]) -> None:
    if not isinstance(value, Mapping):
        raise _type_error("dict", value)
    fields = plan.fields
    for name, member_value in value.items():
        spec = fields.get(name)
        if spec is None:
            error = ResultShapeError(f"{name!r} is not a member of the output shape")
            error.path.append(str(name))
            raise error
        if member_value is None:
            continue
        try:
            spec.write(spec, member_value, out)
        except ResultShapeError as error:
            error.path.insert(0, name)
            raise


_WRITERS: Final[dict[str, Writer]] = {
    "string": _write_string,
    "character": _write_string,
    "boolean": _write_boolean,
    "integer": _write_integer,
    "long": _write_integer,
    "short": _write_integer,
    "byte": _write_integer,
    "float": _write_float,
    "double": _write_float,
    "timestamp": _write_timestamp,
    "blob": _write_blob,
    "structure": _write_structure,
    "list": _write_list,
}

_STRUCTS: dict[tuple[str, str], _Struct] = {}
_LIST_ITEMS: dict[tuple[str, str], _Field] = {}


def _field(service_uid: str, shape: Shape, tag: str) -> _Field:
    type_name: str = shape.type_name
    write = _WRITERS.get(type_name)
    if write is None:
        raise ValueError(f"shape {shape.name} has type {type_name}, which EC2 XML cannot carry")
    spec = _Field(f"<{tag}>", f"</{tag}>", f"<{tag}/>", write)
    if type_name == "structure":
        spec.struct = _struct_plan(service_uid, shape)
    elif type_name == "list":
        spec.item = _list_item(service_uid, shape)
    return spec


def _list_item(service_uid: str, shape: Shape) -> _Field:
    key = (service_uid, str(shape.name))
    item = _LIST_ITEMS.get(key)
    if item is None:
        member = shape.member
        item = _field(service_uid, member, member.serialization.get("name") or "item")
        _LIST_ITEMS[key] = item
    return item


def _struct_plan(service_uid: str, shape: Shape) -> _Struct:
    key = (service_uid, str(shape.name))
    plan = _STRUCTS.get(key)
    if plan is None:
        plan = _STRUCTS[key] = _Struct()  # registered first: shapes may be recursive
        for member_name, member_shape in shape.members.items():
            tag = member_shape.serialization.get("name") or member_name
            plan.fields[member_name] = _field(service_uid, member_shape, tag)
    return plan


def _output_plan(operation: OperationModel) -> _Struct | None:
    shape = operation.output_shape
    if shape is None:
        return None
    return _struct_plan(str(operation.service_model.metadata.get("uid", "")), shape)


# --- documents --------------------------------------------------------------------------------


def serialize_response(
    operation: OperationModel, result: Mapping[str, Any], request_id: str
) -> bytes:
    """The XML body of a successful response; raises ResultShapeError for a misfit result."""
    name: str = operation.name
    out = [
        f'{_DECLARATION}<{name}Response xmlns="{XMLNS}"><requestId>',
        escape(request_id),
        "</requestId>",
    ]
    plan = _output_plan(operation)
    try:
        if plan is None:
            if result:
                raise ResultShapeError(f"{name} has no output members, got {sorted(result)}")
            out.append("<return>true</return>")
        else:
            _write_members(plan, result, out)
    except ResultShapeError as error:
        error.operation = name
        raise
    out.append(f"</{name}Response>")
    return "".join(out).encode("utf-8")


def serialize_error(code: str, message: str, request_id: str) -> bytes:
    """The XML body of an error response, as EC2 writes it."""
    return (
        f"{_DECLARATION}<Response><Errors><Error><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{escape(request_id)}</RequestID></Response>"
    ).encode()
