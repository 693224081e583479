"""Opaque keyset cursors and the orders they belong to.

A cursor is base64url of `[order key, sort value, row id]`. It is the client's to send back,
so it is input like any other: `decode_cursor` accepts only what `encode_cursor` can have
written for the order (a value of the order's SQL type, an id of the table's id type), so no
tampered cursor reaches SQL, where a failed cast would be an internal error.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from graphql_api.errors import BadUserInput

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
NOT_ISSUED = "is not a cursor this API issued"

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ALPHA3 = re.compile(r"^[A-Z]{3}$")
_DECIMAL = re.compile(r"^-?[0-9]{1,30}(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?$")
# What PostgreSQL text cannot take: NUL, and unpaired surrogates (not encodable as UTF-8).
_UNSENDABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class Order:
    column: str  # a column of the ordered table (validated through the enum binding)
    descending: bool
    sql_type: str  # how the cursor's value is cast back in SQL

    @property
    def key(self) -> str:
        return f"{self.column}:{'desc' if self.descending else 'asc'}"


def page_size(first: int | None, argument: str = "first") -> int:
    if first is None:
        return DEFAULT_PAGE_SIZE
    if first < 0 or first > MAX_PAGE_SIZE:
        raise BadUserInput(argument, f"must be between 0 and {MAX_PAGE_SIZE}")
    return first


def encode_cursor(order: Order, value: Any, row_id: Any) -> str:
    if isinstance(value, datetime):
        value = value.isoformat()
    elif isinstance(value, Decimal):
        value = str(value)
    raw = json.dumps([order.key, value, str(row_id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _integer(low: int, high: int) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high

    return check


def _numeric(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) < 10**30
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, str) and bool(_DECIMAL.match(value))  # a Decimal, as encoded


def _text(value: Any) -> bool:
    return isinstance(value, str) and not _UNSENDABLE.search(value)


# Exactly what datetime.isoformat() writes for an aware timestamp: fromisoformat alone also
# takes forms PostgreSQL refuses (ISO week dates, comma fractions).
_ISO_TIMESTAMP = re.compile(
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{6})?[+-][0-9]{2}:[0-9]{2}$"
)


def _timestamptz(value: Any) -> bool:
    if not isinstance(value, str) or not _ISO_TIMESTAMP.match(value):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


# The sort values a cursor may hold, by the order's SQL type (every type of an Order).
_VALUES: Mapping[str, Callable[[Any], bool]] = {
    "text": _text,
    "bpchar": _text,
    "smallint": _integer(-(2**15), 2**15 - 1),
    "integer": _integer(-(2**31), 2**31 - 1),
    "bigint": _integer(-(2**63), 2**63 - 1),
    "numeric": _numeric,
    "timestamptz": _timestamptz,
}
# Row ids, by the table's id type; without one, either.
_IDS: Mapping[str, Callable[[str], bool]] = {
    "uuid": lambda row_id: bool(_UUID.match(row_id)),
    "bpchar": lambda row_id: bool(_ALPHA3.match(row_id)),
}


def decode_cursor(
    cursor: str, order: Order, argument: str = "after", id_type: str | None = None
) -> tuple[Any, str]:
    """The sort value and row id of a cursor of `order` over a table whose id is of
    `id_type`, or BadUserInput naming `argument`."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        decoded = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError, binascii.Error, RecursionError):
        raise BadUserInput(argument, NOT_ISSUED) from None
    if not isinstance(decoded, list) or len(decoded) != 3:
        raise BadUserInput(argument, NOT_ISSUED)
    key, value, row_id = decoded
    if not isinstance(key, str):
        raise BadUserInput(argument, NOT_ISSUED)
    if key != order.key:
        raise BadUserInput(argument, "belongs to a different orderBy; start again without it")
    if not _VALUES[order.sql_type](value):
        raise BadUserInput(argument, NOT_ISSUED)
    id_checks = [_IDS[id_type]] if id_type is not None else list(_IDS.values())
    if not isinstance(row_id, str) or not any(check(row_id) for check in id_checks):
        raise BadUserInput(argument, NOT_ISSUED)
    return value, row_id
