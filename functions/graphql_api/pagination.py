"""Opaque keyset cursors and the orders they belong to."""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from graphql_api.errors import BadUserInput

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200


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


def decode_cursor(cursor: str, order: Order, argument: str = "after") -> tuple[Any, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        key, value, row_id = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (ValueError, TypeError, binascii.Error):
        raise BadUserInput(argument, "is not a cursor this API issued") from None
    if key != order.key:
        raise BadUserInput(argument, "belongs to a different orderBy; start again without it")
    return value, str(row_id)
