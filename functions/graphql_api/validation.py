"""Input rules of the mutations and of the strings filters search for. Each failure names the
argument path and the rule broken; the database's constraints stay as the last line of
defence. Text obeys covenant.project_rules.text_rule (no NUL, no other control characters, no
unpaired surrogates), checked before any SQL runs."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from covenant.project_rules import PROJECT_FIELDS, RuleViolation, clean_project_field, text_rule
from graphql_api.errors import BadUserInput

MAX_SAFE_INTEGER = 2**53 - 1
# joinedAt: not before the UN Charter entered into force (every country listed is a UN member
# or observer state, none a member of anything founded on the Charter before it), and not in
# the future: joining is a fact, recorded when it happened (a pending country has no date).
EARLIEST_JOINED_AT = datetime(1945, 10, 24, tzinfo=UTC)
CLOCK_SKEW = timedelta(minutes=5)
JOINED_AT_RULE = (
    "must be between 1945-10-24 (the UN Charter in force) and now "
    "(a date in the future is refused, with 5 minutes of clock skew)"
)
_ALPHA3 = re.compile(r"^[A-Z]{3}$")
_ALPHA2 = re.compile(r"^[A-Z]{2}$")

# Fields each input may hold (snake_case, as resolvers receive them) and their rules.
COUNTRY_FIELDS = (
    "iso2",
    "name",
    "continent",
    "region",
    "gdp_usd",
    "covenant_status",
    "joined_at",
)

_CAMEL = {
    "sector_id": "sectorId",
    "country_code": "countryCode",
    "budget_usd": "budgetUsd",
    "impact_score": "impactScore",
    "gdp_usd": "gdpUsd",
    "covenant_status": "covenantStatus",
    "joined_at": "joinedAt",
}


def path(field: str) -> str:
    return f"input.{_CAMEL.get(field, field)}"


def _text(value: Any, field: str, *, maximum: int, required: bool = True) -> str:
    broken = text_rule(str(value))
    if broken:
        raise BadUserInput(path(field), broken)
    text = str(value).strip()
    if required and not text:
        raise BadUserInput(path(field), "must not be empty")
    if len(text) > maximum:
        raise BadUserInput(path(field), f"must be at most {maximum} characters")
    return text


def _present(values: Mapping[str, Any], field: str) -> bool:
    """Explicit null for a field that has a value is a mistake, not a way to clear it."""
    if field not in values:
        return False
    if values[field] is None:
        raise BadUserInput(path(field), "must not be null; leave the field out to keep it")
    return True


def project_changes(values: Mapping[str, Any]) -> dict[str, Any]:
    """The validated subset of a project input, by the rules sync pushes obey too
    (covenant.project_rules); each failure names the input field."""
    clean: dict[str, Any] = {}
    for field in PROJECT_FIELDS:
        if _present(values, field):
            try:
                clean[field] = clean_project_field(field, values[field])
            except RuleViolation as exc:
                raise BadUserInput(path(exc.field), exc.rule) from exc
    if clean.get("status") == "completed" and clean.get("progress", 100) != 100:
        raise BadUserInput(path("progress"), "must be 100 for a completed project")
    return clean


def country_changes(values: Mapping[str, Any], region_codes: tuple[str, ...]) -> dict[str, Any]:
    clean: dict[str, Any] = {}
    if _present(values, "iso2"):
        iso2 = str(values["iso2"]).strip().upper()
        if not _ALPHA2.match(iso2):
            raise BadUserInput(path("iso2"), "must be an ISO 3166 alpha-2 code, e.g. KE")
        clean["iso2"] = iso2
    if _present(values, "name"):
        clean["name"] = _text(values["name"], "name", maximum=100)
    if _present(values, "continent"):
        clean["continent"] = values["continent"]
    if _present(values, "region"):
        if values["region"] not in region_codes:
            raise BadUserInput(path("region"), f"must be one of {', '.join(region_codes)}")
        clean["region"] = values["region"]
    if _present(values, "gdp_usd"):
        if not 0 < values["gdp_usd"] <= MAX_SAFE_INTEGER:
            raise BadUserInput(path("gdp_usd"), "must be greater than 0")
        clean["gdp_usd"] = values["gdp_usd"]
    if _present(values, "covenant_status"):
        clean["covenant_status"] = values["covenant_status"]
    if _present(values, "joined_at"):
        clean["joined_at"] = joined_at(values["joined_at"])
    return clean


def joined_at(value: datetime, now: datetime | None = None) -> datetime:
    """A country's joinedAt (the DateTime scalar has parsed it, time zone and all)."""
    latest = (now or datetime.now(UTC)) + CLOCK_SKEW
    if not EARLIEST_JOINED_AT <= value <= latest:
        raise BadUserInput(path("joined_at"), JOINED_AT_RULE)
    return value


def search_text(value: str, argument: str) -> str:
    """A string a filter compares or searches for, checked before it reaches SQL."""
    broken = text_rule(value)
    if broken:
        raise BadUserInput(argument, broken)
    return value


def country_code(value: str, argument: str = "code") -> str:
    code = value.strip().upper()
    if not _ALPHA3.match(code):
        raise BadUserInput(argument, "must be an ISO 3166 alpha-3 code, e.g. KEN")
    return code


def check_expected_version(value: int | None) -> int | None:
    if value is not None and value < 1:
        raise BadUserInput("expectedVersion", "must be a version this API returned (1 or more)")
    return value
