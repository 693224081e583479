"""The rules a project's client-supplied fields obey, by column name, independent of any API.

Each check takes a JSON value and returns it cleaned (trimmed, upper-cased, as the column's
Python type) or raises RuleViolation naming the column and the rule, in words a client can
act on. They match the CHECK constraints of the projects table, which stay the last line of
defence. `region`, `version`, the timestamps and the change number are never client input.

Text (`text_rule`, used by every API for every client string bound for PostgreSQL) refuses:

- NUL (U+0000): PostgreSQL text cannot hold it (the statement would fail with 22021);
- the other C0 controls, DEL and the C1 controls (U+0001-U+001F, U+007F-U+009F): invisible,
  they corrupt logs, CSV exports and terminals, and no name or description needs them. Tab,
  line feed and carriage return are allowed in multi-line text (a description), not in a
  single-line one (a name). Leading and trailing whitespace is trimmed, not refused;
- unpaired UTF-16 surrogates (U+D800-U+DFFF, which JSON can spell as "\\ud800"): not Unicode
  text, they cannot be encoded as UTF-8 for the database.

Format characters (zero-width joiners, bidirectional marks) are allowed: scripts need them.
Numbers are range-checked before any conversion to float, so an integer of 400 digits is a
RuleViolation, never an OverflowError.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

MAX_SAFE_INTEGER = 2**53 - 1
SECTOR_IDS = ("agriculture", "minerals", "energy", "technology", "health", "education")
PROJECT_STATUSES = ("planning", "active", "completed", "cancelled")
_ALPHA3 = re.compile(r"^[A-Z]{3}$")
_CONTROL_SINGLE_LINE = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTI_LINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile("[\ud800-\udfff]")

# Client-writable columns, in table order.
PROJECT_FIELDS = (
    "name",
    "description",
    "sector_id",
    "country_code",
    "status",
    "budget_usd",
    "impact_score",
    "progress",
)
# Their PostgreSQL types, for the casts of bound parameters.
PROJECT_SQL_TYPES: Mapping[str, str] = {
    "name": "text",
    "description": "text",
    "sector_id": "text",
    "country_code": "bpchar",
    "status": "text",
    "budget_usd": "bigint",
    "impact_score": "numeric",
    "progress": "smallint",
}
REQUIRED_ON_CREATE = ("name", "sector_id", "country_code", "budget_usd")
DEFAULTS: Mapping[str, Any] = {
    "description": "",
    "status": "planning",
    "impact_score": 0.0,
    "progress": 0,
}


class RuleViolation(ValueError):
    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def text_rule(text: str, *, multiline: bool = False) -> str | None:
    """The rule `text` breaks as client text (see the module's docstring), or None. The rule
    names the first offending character and its position (1-based), never the text.
    Whitespace around the text (a trailing line feed, say) is not checked: it is trimmed."""
    surrogate = _SURROGATE.search(text)
    if surrogate:
        return (
            f"must be valid Unicode text (an unpaired surrogate U+{ord(surrogate.group()):04X} "
            f"at character {surrogate.start() + 1})"
        )
    start, end = len(text) - len(text.lstrip()), len(text.rstrip())
    control = (_CONTROL_MULTI_LINE if multiline else _CONTROL_SINGLE_LINE).search(text, start, end)
    if control:
        allowed = "; tab, line feed and carriage return are allowed" if multiline else ""
        return (
            f"must not contain control characters (U+{ord(control.group()):04X} "
            f"at character {control.start() + 1}{allowed})"
        )
    return None


def _string(field: str, value: Any, *, multiline: bool = False) -> str:
    if not isinstance(value, str):
        raise RuleViolation(field, "must be a string")
    rule = text_rule(value, multiline=multiline)
    if rule:
        raise RuleViolation(field, rule)
    return value.strip()


def _number(field: str, value: Any) -> int | float:
    """A JSON number as it came (an int stays an int: float() of a 400-digit one overflows)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RuleViolation(field, "must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise RuleViolation(field, "must be a finite number")
    return value


def _integer(field: str, value: Any) -> int:
    number = _number(field, value)
    if isinstance(number, float):
        if not number.is_integer():
            raise RuleViolation(field, "must be a whole number")
        return int(number)
    return number


def _name(value: Any) -> str:
    text = _string("name", value)
    if not text:
        raise RuleViolation("name", "must not be empty")
    if len(text) > 200:
        raise RuleViolation("name", "must be at most 200 characters")
    return text


def _description(value: Any) -> str:
    text = _string("description", value, multiline=True)
    if len(text) > 5000:
        raise RuleViolation("description", "must be at most 5000 characters")
    return text


def _sector_id(value: Any) -> str:
    if value not in SECTOR_IDS:
        raise RuleViolation("sector_id", f"must be one of {', '.join(SECTOR_IDS)}")
    return str(value)


def _country_code(value: Any) -> str:
    code = _string("country_code", value).upper()
    if not _ALPHA3.match(code):
        raise RuleViolation("country_code", "must be an ISO 3166 alpha-3 code, e.g. KEN")
    return code


def _status(value: Any) -> str:
    if value not in PROJECT_STATUSES:
        raise RuleViolation("status", f"must be one of {', '.join(PROJECT_STATUSES)}")
    return str(value)


def _budget_usd(value: Any) -> int:
    budget = _integer("budget_usd", value)
    if not 0 < budget <= MAX_SAFE_INTEGER:
        raise RuleViolation("budget_usd", "must be greater than 0 and at most 2^53 - 1")
    return budget


def _impact_score(value: Any) -> float:
    number = _number("impact_score", value)
    if not 0 <= number <= 10:  # exact for ints of any size: compared before float()
        raise RuleViolation("impact_score", "must be between 0.00 and 10.00")
    score = float(number)
    if round(score, 2) != score:
        raise RuleViolation("impact_score", "must have at most 2 decimal places")
    return score


def _progress(value: Any) -> int:
    progress = _integer("progress", value)
    if not 0 <= progress <= 100:
        raise RuleViolation("progress", "must be between 0 and 100")
    return progress


_CHECKS: Mapping[str, Callable[[Any], Any]] = {
    "name": _name,
    "description": _description,
    "sector_id": _sector_id,
    "country_code": _country_code,
    "status": _status,
    "budget_usd": _budget_usd,
    "impact_score": _impact_score,
    "progress": _progress,
}


def clean_project_field(field: str, value: Any) -> Any:
    """The cleaned value of one client-writable column, or RuleViolation. Null is refused:
    every project column has a value."""
    if value is None:
        raise RuleViolation(field, "must not be null")
    return _CHECKS[field](value)


def check_project(values: Mapping[str, Any]) -> None:
    """Rules across fields of a whole project (its state after the change)."""
    if values.get("status") == "completed" and values.get("progress") != 100:
        raise RuleViolation("progress", "must be 100 for a completed project")
