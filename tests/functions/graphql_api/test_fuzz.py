"""Property-based: documents generated from schema.graphql (valid and invalid queries and
mutations, by hypothesis-graphql) and mutations of several root fields built to commit or fail
on real rows, sent as anonymous, viewer and editor to the deployed handler in-process against
the real database. Whatever the document:

- the answer is never a 5xx, and never an INTERNAL_SERVER_ERROR (the database is up);
- every error carries `extensions.code`, one of the documented codes;
- no committed write is hidden from its caller: every `covenant.*` event a request wrote is for
  a record that a non-null root field of its answer returns (or an error says was applied),
  no root field committed more than it answers, a mutation that ran has `data` (never null),
  and an idempotent retry gets exactly the first answer and writes nothing.

Bounded (150 examples a test, none over 10 s; about 8 s in all) and deterministic
(derandomized, no example database)."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from graphql import OperationDefinitionNode, OperationType, parse
from graphql.error import GraphQLSyntaxError
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st
from hypothesis_graphql import Mode, from_schema, nodes

from covenant import db
from graphql_api.schema import SCHEMA_FILE

from .conftest import EDITOR, VIEWER, call, make_event

CODES = {"UNAUTHENTICATED", "FORBIDDEN", "BAD_USER_INPUT", "NOT_FOUND", "CONFLICT"}
PREFIX = "Fuzz "
POOL_SIZE = 3  # projects of this test's own that generated updates and deletes may hit

FUZZ = settings(
    max_examples=150,
    deadline=10_000,  # ms: examples take 2-60 ms; only a hang (a finding) comes near it
    derandomize=True,  # the same documents on every run
    database=None,  # no example store: nothing carried between runs
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,  # the fixtures are per module, read-only per example
        HealthCheck.filter_too_much,
    ],
    print_blob=True,
)

SCALARS = {
    "Money": st.one_of(
        st.integers(min_value=-(2**63), max_value=2**63), st.sampled_from([0, 1, 2**53])
    ).map(nodes.Int),
    "DateTime": st.one_of(
        st.datetimes().map(lambda d: d.isoformat() + "Z"),
        st.sampled_from(["1945-10-24T00:00:00Z", "not a date", ""]),
    ).map(nodes.String),
}
SDL = SCHEMA_FILE.read_text()
GENERATED = st.one_of(
    from_schema(SDL, custom_scalars=SCALARS, mode=Mode.POSITIVE),
    from_schema(SDL, custom_scalars=SCALARS, mode=Mode.NEGATIVE),
)


# Mutations built to reach the database: fields that commit next to fields that fail.
def _literal(value: Any) -> str:
    return json.dumps(value)  # a GraphQL string literal for strings; numbers as they are


# Names without control characters, which would fail the field (the broken ones do that).
_NAMES = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=12).map(
    lambda s: PREFIX + s
)
# Each built field is drawn to commit or to fail, about half and half; one that fails breaks
# one rule (or targets no project, or a stale version).
_BROKEN_INPUT = st.sampled_from(
    [
        'name: ""',
        'name: "   "',
        'sectorId: "mining"',
        'countryCode: "QQQ"',
        'countryCode: "KENYA"',
        "budgetUsd: 0",
        "budgetUsd: -3",
        "impactScore: 10.5",
        "progress: 101",
        "status: COMPLETED progress: 50",
    ]
)
_MISSING = st.sampled_from(["x", "00000000-0000-4000-8000-000000000000", ""])


@st.composite
def _create(draw: st.DrawFn) -> tuple[str, str | int | None]:
    fields = {
        "name": _literal(draw(_NAMES)),
        "sectorId": _literal(draw(st.sampled_from(["energy", "health"]))),
        "countryCode": _literal(draw(st.sampled_from(["KEN", "NZL"]))),
        "budgetUsd": str(draw(st.sampled_from([1, 5_000_000]))),
    }
    broken = draw(st.one_of(st.just(""), _BROKEN_INPUT))
    fields.pop(broken.split(":")[0], None)  # the broken value replaces the good one
    arguments = " ".join(f"{k}: {v}" for k, v in fields.items())
    return f"createProject(input: {{{arguments} {broken}}}) {{ id name }}", None


@st.composite
def _update(draw: st.DrawFn) -> tuple[str, str | int | None]:
    commits = draw(st.booleans())
    target: str | int = draw(st.integers(min_value=1, max_value=POOL_SIZE - 1))
    change = draw(
        st.one_of(
            st.integers(0, 99).map(lambda n: f"progress: {n}"),  # 100 needs COMPLETED
            _NAMES.map(lambda name: f"name: {_literal(name)}"),
            st.sampled_from(['countryCode: "NZL"', 'countryCode: "KEN"']),
        )
    )
    version = ""
    if not commits:
        how = draw(st.sampled_from(["input", "target", "version"]))
        if how == "input":
            change = draw(_BROKEN_INPUT)
        elif how == "target":
            target = draw(_MISSING)
        else:
            version = "expectedVersion: 999"
    return f"updateProject(id: ID_OF, input: {{{change}}} {version}) {{ id version }}", target


@st.composite
def _delete(draw: st.DrawFn) -> tuple[str, str | int | None]:
    target: str | int = draw(st.one_of(st.just(0), _MISSING))  # updates hit the others
    version = draw(st.sampled_from(["", "expectedVersion: 999"]))
    return f"deleteProject(id: ID_OF {version}) {{ id }}", target


_OTHERS = st.sampled_from(
    [
        (
            'createCountry(input: {code: "ZZZ", iso2: "ZZ", name: "Z", continent: EUROPE, '
            'region: "ams", gdpUsd: 1}) { code }',
            None,
        ),
        ('updateCountry(code: "NOR", input: {gdpUsd: 1}) { code }', None),
        ('setUserRole(input: {user: "someone@covenant.test", role: ADMIN}) { changed }', None),
    ]
)
BUILT = st.lists(st.one_of(_create(), _update(), _delete(), _OTHERS), min_size=1, max_size=4)


@pytest.fixture(scope="module")
def pool(servers, primary_lambda) -> Iterator[list[str]]:
    """Projects this test owns; and afterwards, every project the test created goes. Writes
    from a secondary region reach the primary through `primary_lambda`, which this module may
    be the first to need."""
    with db.writer().session() as session:
        start = int(session.scalar("SELECT coalesce(max(seq), 0) FROM outbox"))
    ids = []
    for index in range(POOL_SIZE):
        reply = call(
            servers,
            make_event(
                query="mutation ($i: CreateProjectInput!) { createProject(input: $i) { id } }",
                variables={
                    "i": {
                        "name": f"{PREFIX}pool {index}",
                        "sectorId": "energy",
                        "countryCode": "KEN",
                        "budgetUsd": 1_000,
                    }
                },
                claims=EDITOR,
            ),
        )
        ids.append(reply.body["data"]["createProject"]["id"])
    yield ids
    with db.writer().session() as session:
        session.run(
            "DELETE FROM projects WHERE id IN (SELECT CAST(aggregate_id AS uuid) FROM outbox "
            "WHERE seq > :start AND subject = 'covenant.projects.created')",
            start=start,
        )


def _last_seq() -> int:
    with db.writer().session() as session:
        return int(session.scalar("SELECT coalesce(max(seq), 0) FROM outbox"))


def _events_since(seq: int) -> list[tuple[str, str]]:
    with db.writer().session() as session:
        return [
            (str(row[0]), str(row[1]))
            for row in session.run(
                "SELECT subject, aggregate_id FROM outbox "
                "WHERE seq > :seq AND subject LIKE 'covenant.%' ORDER BY seq",
                seq=seq,
            )
        ]


def _operation(document: str) -> OperationType | None:
    try:
        parsed = parse(document)
    except GraphQLSyntaxError:
        return None
    operations = [d for d in parsed.definitions if isinstance(d, OperationDefinitionNode)]
    return operations[0].operation if len(operations) == 1 else None


def _answered(data: dict[str, Any] | None, errors: list[dict[str, Any]]) -> Counter[str]:
    """The records the root fields of an answer return (an `id` or a `code`), once per field,
    and those that errors say were applied."""
    answered: Counter[str] = Counter()
    for value in (data or {}).values():
        if isinstance(value, dict):
            for key in ("id", "code"):
                if isinstance(value.get(key), str):
                    answered[value[key]] += 1
    for error in errors:
        extensions = error.get("extensions") or {}
        if extensions.get("applied") and isinstance(extensions.get("id"), str):
            answered[extensions["id"]] += 1
    return answered


def _check(document: str, status: int, body: Any, events: list[tuple[str, str]]) -> None:
    assert status < 500, body
    assert isinstance(body, dict), body
    errors = body.get("errors") or []
    for error in errors:
        code = (error.get("extensions") or {}).get("code")
        assert code in CODES, error
    operation = _operation(document)
    if operation != OperationType.MUTATION:
        assert events == [], (document, events)
        return
    if "data" in body:  # it ran: every root field has its own result
        assert isinstance(body["data"], dict), body
    written = Counter(aggregate for _, aggregate in events)
    answered = _answered(body.get("data"), errors)
    for aggregate, count in written.items():
        # A write per field (a create or an update writes one covenant.* event).
        assert count <= answered[aggregate], (document, body, events)


def _run(servers: Any, document: str, claims: dict[str, Any] | None, accept: str, key: bool):
    headers = {"accept": accept}
    if key:
        headers["Idempotency-Key"] = f"fuzz-{uuid.uuid4().hex}"
    request = make_event(query=document, claims=claims, headers=headers)
    before = _last_seq()
    first = call(servers, request)
    events = _events_since(before)
    note(f"document: {document}\nanswer: {first.status} {first.body}\nevents: {events}")
    nulls = [k for k, v in (first.data or {}).items() if v is None] if first.data else []
    if events:
        event("committed, with a failed field" if nulls else "committed")
    else:
        event(f"committed nothing: {first.status}")
    _check(document, first.status, first.body, events)
    if key and _operation(document) == OperationType.MUTATION:
        again_from = _last_seq()
        again = call(servers, request)
        assert (again.status, again.body) == (first.status, first.body), document
        assert _events_since(again_from) == [], document


ACTORS = st.sampled_from([None, VIEWER, EDITOR])
WRITERS = st.sampled_from([EDITOR, EDITOR, EDITOR, EDITOR, VIEWER, None])  # mostly a writer
ACCEPTS = st.sampled_from(["application/graphql-response+json", "application/json"])


@FUZZ
@given(
    document=GENERATED,
    claims=ACTORS,
    accept=ACCEPTS,
    key=st.booleans(),
)
def test_generated_documents(servers, pool, document, claims, accept, key) -> None:
    _run(servers, document, claims, accept, key)


@FUZZ
@given(fields=BUILT, claims=WRITERS, key=st.booleans())
def test_mutations_of_several_fields_never_hide_a_write(servers, pool, fields, claims, key) -> None:
    selections = []
    for index, (selection, target) in enumerate(fields):
        if target is not None:
            project = pool[target] if isinstance(target, int) else target
            selection = selection.replace("ID_OF", _literal(project))
        selections.append(f"f{index}: {selection}")
    document = "mutation { " + " ".join(selections) + " }"
    _run(servers, document, claims, "application/graphql-response+json", key)
