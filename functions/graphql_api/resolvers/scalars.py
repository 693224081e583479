"""Money (whole dollars, exact as JSON numbers), MoneyTotal (sums of them, exact as decimal
strings) and DateTime (ISO-8601, UTC)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from ariadne import ScalarType
from graphql import IntValueNode, StringValueNode, ValueNode

from graphql_api.executor import serialised_as_itself

MAX_SAFE_INTEGER = 2**53 - 1

money = ScalarType("Money")
money_total = ScalarType("MoneyTotal")
date_time = ScalarType("DateTime")


def serialize_money(value: Any) -> int:
    if isinstance(value, Decimal) and value != value.to_integral_value():
        raise TypeError(f"Money must be whole dollars, got {value}")
    return int(value)


def serialize_money_total(value: Any) -> str:
    """A sum from the database (numeric or bigint) as its decimal digits: no float on the way,
    so no sum loses a dollar."""
    if isinstance(value, Decimal) and value != value.to_integral_value():
        raise TypeError(f"MoneyTotal must be whole dollars, got {value}")
    if isinstance(value, float | bool):
        raise TypeError(f"MoneyTotal must be an exact whole number, got {value!r}")
    return str(int(value))


def parse_money_total(value: Any, variables: dict[str, Any] | None = None) -> int:
    raise ValueError("MoneyTotal is a computed sum: it is never an input")


def parse_money(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("Money must be a whole number of US dollars")
    if isinstance(value, float) and not value.is_integer():
        raise ValueError("Money must be a whole number of US dollars (no cents)")
    amount = int(value)
    if amount < 0 or amount > MAX_SAFE_INTEGER:
        raise ValueError(
            f"Money must be between 0 and {MAX_SAFE_INTEGER} (a budget: between 1 and "
            f"{MAX_SAFE_INTEGER})"
        )
    return amount


def parse_money_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> int:
    if not isinstance(node, IntValueNode):
        raise ValueError("Money must be a whole number of US dollars")
    return parse_money(int(node.value))


def serialize_date_time(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_date_time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise ValueError("DateTime must be an ISO-8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("DateTime must be ISO-8601, e.g. 2026-11-28T10:00:00Z") from None
    if parsed.tzinfo is None:
        raise ValueError("DateTime must include a time zone, e.g. Z")
    return parsed


def parse_date_time_literal(node: ValueNode, variables: dict[str, Any] | None = None) -> datetime:
    if not isinstance(node, StringValueNode):
        raise ValueError("DateTime must be an ISO-8601 string")
    return parse_date_time(node.value)


money.set_serializer(serialize_money)
serialised_as_itself("Money", int)  # serialize_money(n) is n for an int
money.set_value_parser(parse_money)
money.set_literal_parser(parse_money_literal)
money_total.set_serializer(serialize_money_total)
money_total.set_value_parser(parse_money_total)
money_total.set_literal_parser(parse_money_total)
date_time.set_serializer(serialize_date_time)
date_time.set_value_parser(parse_date_time)
date_time.set_literal_parser(parse_date_time_literal)
