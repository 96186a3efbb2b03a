"""Decode the parameters of one EC2 Query request into the operation's input dict.

The wire format is the one botocore's ``EC2Serializer`` writes: a member's wire name is its
``queryName``, else its ``locationName`` with the first letter upper-cased, else the member
name; lists are ``Name.1`` .. ``Name.N``; nested fields are joined with dots. The result is keyed
by the model's member names, as boto3 users write the input, with values typed by shape.

Every malformed input raises an :class:`~ebsemu.errors.ApiError` subclass, never anything else.
Enum values and min/max constraints are left to the service.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from botocore.model import OperationModel, Shape

from ebsemu.errors import (
    ClientError,
    InvalidParameterValue,
    MissingParameter,
    UnknownParameter,
)

# Request-level parameters (action, version, SigV2 and SigV4 query authentication).
COMMON_PARAMS: Final[frozenset[str]] = frozenset(
    {
        "Action",
        "Version",
        "AWSAccessKeyId",
        "SignatureVersion",
        "SignatureMethod",
        "Signature",
        "Timestamp",
        "Expires",
        "SecurityToken",
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
        "X-Amz-Content-Sha256",
    }
)
# Any other X-Amz-* query parameter is authentication too; no EC2 member is named like that.
_AUTH_PREFIX: Final = "x-amz-"

MAX_LIST_INDEX: Final = 10000
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_MAX_SCALAR_TEXT: Final = 64  # longer numbers, booleans and timestamps are invalid anyway

_INT_RE: Final = re.compile(r"-?[0-9]{1,19}")
_FLOAT_RE: Final = re.compile(r"-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]{1,4})?")
_INDEX_RE: Final = re.compile(r"[1-9][0-9]{0,4}")

Converter = Callable[[str, str], Any]


def _clip(text: str, limit: int = 64) -> str:
    """Shorten text quoted back to the client."""
    return text if len(text) <= limit else text[:limit] + "..."


def _invalid(name: str, value: str, expected: str) -> ClientError:
    return InvalidParameterValue(
        f"Value ({_clip(value)}) for parameter {_clip(name, 128)} is invalid. {expected}"
    )


def _unknown(name: str) -> ClientError:
    return UnknownParameter(f"The parameter {_clip(name, 128)} is not recognized")


def _missing(name: str) -> ClientError:
    return MissingParameter(f"The request must contain the parameter {name}")


# --- scalar converters: (text, wire name) -> typed value --------------------------------------


def _to_string(value: str, name: str) -> str:
    return value


def _to_integer(value: str, name: str) -> int:
    if _INT_RE.fullmatch(value):
        number = int(value)
        if _INT64_MIN <= number <= _INT64_MAX:
            return number
    raise _invalid(name, value, "Expected a decimal integer.")


def _to_float(value: str, name: str) -> float:
    if len(value) <= _MAX_SCALAR_TEXT and _FLOAT_RE.fullmatch(value):
        number = float(value)
        if math.isfinite(number):
            return number
    raise _invalid(name, value, "Expected a finite decimal number.")


def _to_boolean(value: str, name: str) -> bool:
    lowered = value.lower() if len(value) <= 5 else ""
    if lowered == "true":
        return True
    if lowered == "false":
        return False
    raise _invalid(name, value, "Expected 'true' or 'false'.")


def _to_timestamp(value: str, name: str) -> datetime:
    if len(value) <= _MAX_SCALAR_TEXT and value.isascii():
        try:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                return moment.replace(tzinfo=UTC)
            return moment.astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    raise _invalid(name, value, "Expected an ISO 8601 timestamp such as 2024-01-02T03:04:05Z.")


def _to_blob(value: str, name: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error is a ValueError; so is non-ASCII input
        raise _invalid(name, value, "Expected base64-encoded data.") from None


_CONVERTERS: Final[dict[str, Converter]] = {
    "string": _to_string,
    "character": _to_string,
    "integer": _to_integer,
    "long": _to_integer,
    "short": _to_integer,
    "byte": _to_integer,
    "float": _to_float,
    "double": _to_float,
    "boolean": _to_boolean,
    "timestamp": _to_timestamp,
    "blob": _to_blob,
}


# --- per-shape plans --------------------------------------------------------------------------


@dataclass(slots=True)
class _Scalar:
    convert: Converter


@dataclass(slots=True)
class _List:
    element: _Plan | None = None  # set right after creation (shapes may be recursive)


@dataclass(slots=True)
class _Member:
    name: str  # key in the parsed dict
    wire: str  # name segment on the wire
    plan: _Plan


@dataclass(slots=True)
class _Struct:
    by_wire: dict[str, _Member] = field(default_factory=dict)
    by_name: dict[str, _Member] = field(default_factory=dict)
    required: tuple[_Member, ...] = ()


_Plan = _Scalar | _List | _Struct

_PLANS: dict[tuple[str, str], _Plan] = {}


def wire_name(member: Shape, member_name: str) -> str:
    """The name botocore's EC2Serializer gives a structure member on the wire."""
    serialization: dict[str, str] = member.serialization
    if "queryName" in serialization:
        return serialization["queryName"]
    location = serialization.get("name")
    if location:
        return location[0].upper() + location[1:]
    return member_name


def _plan_for(service_uid: str, shape: Shape) -> _Plan:
    key = (service_uid, str(shape.name))
    plan = _PLANS.get(key)
    if plan is not None:
        return plan
    type_name: str = shape.type_name
    if type_name == "structure":
        struct = _Struct()
        _PLANS[key] = struct
        for member_name, member_shape in shape.members.items():
            member = _Member(
                member_name,
                wire_name(member_shape, member_name),
                _plan_for(service_uid, member_shape),
            )
            struct.by_wire[member.wire] = member
            struct.by_name[member.name] = member
        struct.required = tuple(struct.by_name[name] for name in shape.required_members)
        return struct
    if type_name == "list":
        listing = _List()
        _PLANS[key] = listing
        listing.element = _plan_for(service_uid, shape.member)
        return listing
    converter = _CONVERTERS.get(type_name)
    if converter is None:
        raise ValueError(f"shape {shape.name} has type {type_name}, which EC2 Query cannot carry")
    plan = _PLANS[key] = _Scalar(converter)
    return plan


def _input_plan(operation: OperationModel) -> _Struct | None:
    shape = operation.input_shape
    if shape is None:
        return None
    plan = _plan_for(str(operation.service_model.metadata.get("uid", "")), shape)
    assert isinstance(plan, _Struct), "an input shape is a structure"
    return plan


# --- parsing ----------------------------------------------------------------------------------


def _list_index(segment: str, name: str) -> int:
    if _INDEX_RE.fullmatch(segment):
        index = int(segment)
        if index <= MAX_LIST_INDEX:
            return index
    raise _invalid(name, segment, f"List indexes run from 1 to {MAX_LIST_INDEX}.")


def _leaf(plan: _Plan, value: str, name: str) -> Any:
    """The typed value of a parameter that ends at ``plan``."""
    if isinstance(plan, _Scalar):
        return plan.convert(value, name)
    if isinstance(plan, _List):
        if value == "":
            return []  # how the query protocol writes an empty list
        raise _invalid(name, value, f"Expected a list: {_clip(name, 128)}.1, .2, ...")
    raise _invalid(name, value, f"Expected a structure: {_clip(name, 128)}.<field>.")


def _conflict(name: str, value: str) -> ClientError:
    return _invalid(name, value, "The parameter is given both as a value and with sub-fields.")


def _insert(root: _Struct, tree: dict[Any, Any], name: str, value: str) -> None:
    """Place one parameter into ``tree`` (nested dicts keyed by member name or list index)."""
    segments = name.split(".")
    last = len(segments) - 1
    plan: _Plan = root
    container = tree
    for depth, segment in enumerate(segments):
        key: str | int
        if isinstance(plan, _Struct):
            member = plan.by_wire.get(segment)
            if member is None:
                raise _unknown(name)
            key, child = member.name, member.plan
        elif isinstance(plan, _List):
            assert plan.element is not None
            key, child = _list_index(segment, name), plan.element
        else:
            raise _invalid(name, value, f"{_clip('.'.join(segments[:depth]))} takes one value.")
        existing = container.get(key)
        if depth == last:
            if existing is not None:
                raise _conflict(name, value)
            container[key] = _leaf(child, value, name)
        else:
            if existing is None:
                existing = container[key] = {}
            elif not isinstance(existing, dict):
                raise _conflict(name, value)
            container = existing
        plan = child


def _finish(plan: _Plan, node: Any, prefix: str) -> Any:
    """Turn the nested dicts of ``_insert`` into lists and dicts; check required members."""
    if not isinstance(node, dict):
        return node  # a typed scalar or an empty list
    if isinstance(plan, _List):
        assert plan.element is not None
        element = plan.element
        return [_finish(element, node[i], f"{prefix}{i}.") for i in sorted(node)]
    assert isinstance(plan, _Struct)
    result: dict[str, Any] = {}
    for key, child in node.items():
        member = plan.by_name[key]
        result[key] = _finish(member.plan, child, f"{prefix}{member.wire}.")
    for member in plan.required:
        present = result.get(member.name)
        if present is None or present == []:
            raise _missing(prefix + member.wire)
    return result


def parse_query(operation: OperationModel, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The input of ``operation`` from decoded request parameters, keyed by member name.

    Raises MissingParameter, UnknownParameter or InvalidParameterValue (see ebsemu.errors).
    """
    root = _input_plan(operation)
    tree: dict[Any, Any] = {}
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise _invalid(name, value, "The parameter is given more than once.")
        seen.add(name)
        if name in COMMON_PARAMS or name[:6].lower() == _AUTH_PREFIX:
            continue
        if root is None:
            raise _unknown(name)
        _insert(root, tree, name, value)
    if root is None:
        return {}
    result: dict[str, Any] = _finish(root, tree, "")
    return result
