"""The EBS direct API's rest-json protocol, driven by botocore's `ebs` model (2019-11-02).

Requests: members bound to the URI, the query string and headers, a JSON body, or a blob
payload (PutSnapshotBlock's block). Every value is checked against its shape (type, range,
length, pattern, enum) and a violation is a ValidationException in AWS's own wording.
Responses: header members, then the blob payload or a JSON body; timestamps as epoch seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from botocore.loaders import Loader
from botocore.model import ListShape, OperationModel, ServiceModel, Shape, StructureShape

from ebsemu import errors

API_VERSION = "2019-11-02"
JSON = "application/json"
BINARY = "application/octet-stream"
_INTEGER = re.compile(r"-?[0-9]{1,19}")
_INT_RANGE = {"integer": (-(2**31), 2**31 - 1), "long": (-(2**63), 2**63 - 1)}


@cache
def ebs_model() -> ServiceModel:
    """botocore's EBS direct API model, loaded once."""
    data = Loader().load_service_model("ebs", "service-2", API_VERSION)
    return ServiceModel(data, service_name="ebs")


class ResultShapeError(ValueError):
    """A result holds a key its output shape lacks (a programming error, never sent)."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    content_type: str


def _invalid(wire: str, constraint: str, value: object = None) -> errors.ValidationException:
    shown = "null" if value is None else f"'{str(value)[:64]}'"
    return errors.ValidationException(
        f"1 validation error detected: Value {shown} at '{wire}' failed to satisfy "
        f"constraint: {constraint}",
        "INVALID_PARAMETER_VALUE",
    )


def _bounded(wire: str, value: Any, size: int, meta: Mapping[str, Any], what: str) -> None:
    if "min" in meta and size < meta["min"]:
        raise _invalid(
            wire, f"Member must have {what} greater than or equal to {meta['min']}", value
        )
    if "max" in meta and size > meta["max"]:
        raise _invalid(wire, f"Member must have {what} less than or equal to {meta['max']}", value)


def _check_scalar(shape: Shape, wire: str, value: Any) -> Any:
    meta = shape.metadata
    kind = shape.type_name
    if kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            raise _invalid(wire, "Member must be a number", value)
        low, high = _INT_RANGE[kind]
        if not low <= value <= high:
            raise _invalid(wire, f"Member must be a {kind} from {low} to {high}", value)
        _bounded(wire, value, value, meta, "value")
    elif kind == "boolean":
        if not isinstance(value, bool):
            raise _invalid(wire, "Member must be a boolean", value)
    elif kind == "string":
        if not isinstance(value, str):
            raise _invalid(wire, "Member must be a string", value)
        _bounded(wire, value, len(value), meta, "length")
        enum = shape.enum
        if enum and value not in enum:
            raise _invalid(wire, f"Member must satisfy enum value set: [{', '.join(enum)}]", value)
        pattern = meta.get("pattern")
        if pattern and not re.fullmatch(pattern, value):
            raise _invalid(
                wire, f"Member must satisfy regular expression pattern: {pattern}", value
            )
    return value


def _from_text(shape: Shape, wire: str, text: str) -> Any:
    """A URI, query or header value, typed by its shape."""
    if shape.type_name in ("integer", "long"):
        if not _INTEGER.fullmatch(text.strip()):
            raise _invalid(wire, "Member must be a number", text)
        return _check_scalar(shape, wire, int(text.strip()))
    if shape.type_name == "boolean":
        if text not in ("true", "false"):
            raise _invalid(wire, "Member must be a boolean", text)
        return text == "true"
    return _check_scalar(shape, wire, text)


def _from_json(shape: Shape, wire: str, value: Any) -> Any:
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            raise _invalid(wire, "Member must be an object", value)
        out: dict[str, Any] = {}
        for name, member in shape.members.items():
            if name in value and value[name] is not None:
                out[name] = _from_json(member, f"{wire}.{name}" if wire else name, value[name])
        for name in shape.required_members:
            if name not in out:
                raise _invalid(f"{wire}.{name}" if wire else name, "Member must not be null")
        return out
    if isinstance(shape, ListShape):
        if not isinstance(value, list):
            raise _invalid(wire, "Member must be a list", value)
        return [_from_json(shape.member, f"{wire}.{i + 1}", item) for i, item in enumerate(value)]
    return _check_scalar(shape, wire, value)


def parse_request(
    operation: OperationModel,
    uri: Mapping[str, str],
    query: Mapping[str, str],
    headers: Mapping[str, str],
    body: bytes,
) -> dict[str, Any]:
    """The operation's input parameters, checked against its input shape."""
    shape = operation.input_shape
    assert shape is not None
    payload = shape.serialization.get("payload")
    document: dict[str, Any] = {}
    if payload is None and body:
        try:
            loaded = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise errors.ValidationException(
                "The request body is not valid JSON.", "INVALID_PARAMETER_VALUE"
            ) from None
        except RecursionError:  # the decoder recurses once per level of nesting
            raise errors.ValidationException(
                "The request body is nested too deeply.", "INVALID_PARAMETER_VALUE"
            ) from None
        if not isinstance(loaded, dict):
            raise errors.ValidationException(
                "The request body must be a JSON object.", "INVALID_PARAMETER_VALUE"
            )
        document = loaded
    params: dict[str, Any] = {}
    for name, member in shape.members.items():
        location = member.serialization.get("location")
        wire = member.serialization.get("name", name)
        text: str | None = None
        if location == "uri":
            text = uri.get(wire)
        elif location == "querystring":
            text = query.get(wire)
        elif location == "header":
            text = headers.get(wire)
        elif name == payload:
            params[name] = body
            continue
        elif document.get(name) is not None:
            params[name] = _from_json(member, name, document[name])
            continue
        if text is not None:
            params[name] = _from_text(member, wire, text)
    for name in shape.required_members:
        if name not in params or (name == payload and not body):
            member = shape.members[name]
            raise _invalid(member.serialization.get("name", name), "Member must not be null")
    return params


def _unknown_keys(shape: StructureShape, value: Mapping[str, Any]) -> None:
    unknown = set(value) - set(shape.members)
    if unknown:
        raise ResultShapeError(f"{shape.name} has no members {sorted(unknown)}")


def _to_json(shape: Shape, value: Any) -> Any:
    if isinstance(shape, StructureShape):
        _unknown_keys(shape, value)
        return {
            name: _to_json(member, value[name])
            for name, member in shape.members.items()
            if value.get(name) is not None
        }
    if isinstance(shape, ListShape):
        return [_to_json(shape.member, item) for item in value]
    if shape.type_name == "timestamp":
        assert isinstance(value, datetime)
        return value.timestamp()
    return value


def serialize_response(operation: OperationModel, result: Mapping[str, Any]) -> Reply:
    """The operation's success response: its status, header members, then body."""
    shape = operation.output_shape
    assert shape is not None
    _unknown_keys(shape, result)
    status = int(operation.http.get("responseCode", 200))
    payload = shape.serialization.get("payload")
    headers: dict[str, str] = {}
    document: dict[str, Any] = {}
    body = b""
    for name, member in shape.members.items():
        value = result.get(name)
        if value is None:
            continue
        if member.serialization.get("location") == "header":
            headers[member.serialization["name"]] = str(value)
        elif name == payload:
            body = bytes(value)
        else:
            document[name] = _to_json(member, value)
    if payload is not None:
        return Reply(status, headers, body, BINARY)
    return Reply(status, headers, json.dumps(document).encode(), JSON)


def serialize_error(exc: errors.ApiError, request_id: str) -> Reply:
    """A rest-json error: the code in x-amzn-ErrorType, Message (and Reason) in the body."""
    document: dict[str, str] = {"Message": exc.message[:256]}
    reason = getattr(exc, "reason", None)
    if reason:
        document["Reason"] = reason
    headers = {"x-amzn-ErrorType": exc.code, "x-amzn-RequestId": request_id}
    return Reply(exc.http_status, headers, json.dumps(document).encode(), JSON)
