"""The pipe between the local Lambda runtime and an execution environment, and its JSON.

A frame (both ways): an 8-byte prefix (header length, payload length, big-endian), the header
as JSON, then the payload bytes. Requests go to the environment's stdin, answers come back on
its stdout (devstack.bootstrap).

JSON here is orjson's where the result is certain to equal the standard library's, and the
standard library's otherwise. Lambda's Python 3.11 runtime encodes a handler's result with
`json.dumps`: a datetime, a UUID, an Enum or a set is a `Runtime.MarshalError` there, so it
must be one here, although orjson would encode it. orjson is used only for values made of
exact dicts (string keys), lists, tuples, strings, ints, finite floats, booleans and None; any
other value goes to `json`, which then succeeds or fails as Lambda's runtime does. Decoding
goes to `json` for what orjson reads differently: NaN and Infinity, which orjson rejects, and
integers past 64 bits, which it would read as floats. The bytes can differ from Lambda's
(orjson writes non-ASCII characters as UTF-8 rather than `\\uXXXX`, and no spaces): the decoded
values never do.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import orjson

PREFIX = struct.Struct(">II")  # header length, payload length
_PLAIN_SCALARS = (str, int, float, bool, type(None))
# orjson reads an integer past 64 bits as a float: any float this large may have been one.
_HUGE = float(2**63)


def frame(header: dict[str, Any], payload: bytes = b"") -> bytes:
    encoded = orjson.dumps(header)
    return PREFIX.pack(len(encoded), len(payload)) + encoded + payload


def dumps(value: Any) -> bytes:
    """`json.dumps(value).encode()`, as a value, faster when the value is plain JSON."""
    if _plain(value, 0):
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            pass  # an integer past 64 bits, a lone surrogate, nesting orjson refuses
    return json.dumps(value).encode()


def dumps_built(value: Any) -> bytes:
    """`dumps` of a value the caller built from plain JSON types (an API Gateway event)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode()  # a header with a lone surrogate, for instance


def loads(data: bytes) -> Any:
    """`json.loads(data)`, faster for what orjson reads alike."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # json reads NaN and Infinity; real errors raise from here
    return json.loads(data) if _has_huge_float(value) else value


def _has_huge_float(value: Any) -> bool:
    kind = type(value)
    if kind is dict:
        return any(_has_huge_float(item) for item in value.values())
    if kind is list:
        return any(_has_huge_float(item) for item in value)
    return kind is float and abs(value) >= _HUGE


def _plain(value: Any, depth: int) -> bool:
    kind = type(value)
    if kind is dict:
        return depth < 64 and all(
            type(key) is str and _plain(item, depth + 1) for key, item in value.items()
        )
    if kind is list or kind is tuple:
        return depth < 64 and all(_plain(item, depth + 1) for item in value)
    if kind is float:
        return bool(value - value == 0.0)  # finite: NaN and Infinity are json's to write
    return kind in _PLAIN_SCALARS
