"""The runtime's pipe JSON: orjson's speed, the standard library's answers (what Lambda's
Python runtime encodes, fails to encode, or decodes)."""

from __future__ import annotations

import enum
import json
import math
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from devstack import wire


class Colour(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Name(str):
    pass


PLAIN = [
    {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": '{"a": "\\"x"}'},
    {"nested": [1, 2.5, -3, True, None, "é ✓", {"deep": [[]]}], "empty": {}},
    [2**63 - 1, -(2**63), 1e300, 0.1],
    ("a", "tuple"),
    "a string",
]


@pytest.mark.parametrize("value", PLAIN)
def test_plain_values_encode_to_what_json_decodes_alike(value: Any) -> None:
    assert json.loads(wire.dumps(value)) == json.loads(json.dumps(value))


@pytest.mark.parametrize(
    "value",
    [
        {"when": datetime(2026, 12, 6, tzinfo=UTC)},
        {"id": uuid.UUID(int=1)},
        {"colour": Colour.RED},
        {"set": {1, 2}},
        {1: "an int key"},
        {"big": 2**70},
        {"nan": math.nan, "inf": math.inf},
        {"level": Level.HIGH, "name": Name("subclass")},
        {"surrogate": "\ud800"},
    ],
)
def test_other_values_encode_or_fail_as_json_does(value: Any) -> None:
    try:
        expected: bytes | type[Exception] = json.dumps(value).encode()
    except (TypeError, ValueError) as exc:
        expected = type(exc)
    if isinstance(expected, bytes):
        assert wire.dumps(value) == expected
    else:
        with pytest.raises(expected):
            wire.dumps(value)


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": [1, 2.5, "x", null, true]}',
        b"[123456789012345678901234567890, -98765432109876543210987]",
        # Just past 64 bits either way (19 and 20 digits), inside an object, and a float.
        b'{"a": {"b": [9223372036854775807, 18446744073709551616]}, "c": 1.5e300}',
        b"[-9223372036854775809, 9999999999999999999.5]",
        b'{"digits in a string": "12345678901234567890", "n": 1}',
        b'{"n": NaN, "i": -Infinity}',
        b'"\\u00e9"',
    ],
)
def test_decoding_reads_what_json_reads(data: bytes) -> None:
    decoded, expected = wire.loads(data), json.loads(data)
    assert json.dumps(decoded) == json.dumps(expected)
    assert [type(v) for v in _leaves(decoded)] == [type(v) for v in _leaves(expected)]


def test_decoding_errors_are_json_errors() -> None:
    with pytest.raises(json.JSONDecodeError):
        wire.loads(b"{not json")


def test_a_frame_carries_its_header_and_payload() -> None:
    encoded = wire.frame({"requestId": "r-1", "deadlineMs": 5}, b"payload")
    header_size, payload_size = wire.PREFIX.unpack_from(encoded)
    body = encoded[wire.PREFIX.size :]
    assert json.loads(body[:header_size]) == {"requestId": "r-1", "deadlineMs": 5}
    assert body[header_size:] == b"payload" and payload_size == len(b"payload")


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]
