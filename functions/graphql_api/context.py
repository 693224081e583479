"""Per-request state handed to every resolver: who asks, where, one database session, and the
batches that keep nested fields at one statement per list level."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

from graphql import GraphQLResolveInfo
from graphql.pyutils import Path

from covenant import db
from covenant.db import Row, Session
from covenant.regions import Region
from graphql_api.auth import Actor

T = TypeVar("T")


@dataclass
class RequestContext:
    actor: Actor
    region: str
    request_id: str
    regions: tuple[Region, ...]
    writes: bool = False  # a mutation: read from the writer too, so a client sees its write
    committed_writes: int = 0  # transactions committed so far: a retry must not repeat them
    read_primary: bool = False  # a read the replica could not serve (Covenant-Min-Position)
    # Root mutation fields (response keys) whose write committed: what each wrote (an id, a
    # code, a user name), so that one whose answer fails still says it was applied.
    applied: dict[str, str] = field(default_factory=dict)
    _session: Session | None = None
    _batches: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _field_keys: dict[tuple[Any, ...], tuple[str, ...]] = field(default_factory=dict)
    # Each row's list level, by the row's identity (the level holds the row, so the identity
    # stays its own for the request). Kept here, not in the row: a row holding its level
    # would be a reference cycle, and a request's 2 000 rows would then wait for the cyclic
    # collector instead of being freed when the request ends.
    _levels: dict[int, list[Row]] = field(default_factory=dict)
    # Levels marked but not indexed yet: most levels (the 1 950 projects of a page of pages)
    # have no list below them that asks for their siblings.
    _unindexed: list[list[Row]] = field(default_factory=list)

    @property
    def region_codes(self) -> tuple[str, ...]:
        return tuple(r.code for r in self.regions)

    @property
    def session(self) -> Session:
        if self._session is None:
            primary = self.writes or self.read_primary
            self._session = Session(db.writer() if primary else db.reader())
        return self._session

    def batch(self, key: tuple[Any, ...], load: Callable[[], T]) -> T:
        """The result of `load` for this key, computed once per request."""
        if key not in self._batches:
            self._batches[key] = load()
        result: T = self._batches[key]
        return result


Info: TypeAlias = GraphQLResolveInfo[RequestContext]


def context_of(info: Info) -> RequestContext:
    return info.context


def field_key(info: Info, arguments: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """Identifies one field of the query document (list indices dropped, aliases kept) and
    its arguments: every parent resolved at this field shares one batch."""
    keys: list[str] = []
    step: Path | None = info.path
    while step is not None:
        if type(step.key) is str:
            keys.append(step.key)
        step = step.prev
    path = tuple(reversed(keys))
    if not arguments:
        return (*path, "{}")
    # The same field at the same path has the same arguments throughout a request (its
    # variables are fixed): serialised once, not once per parent.
    known = info.context._field_keys
    memo = (id(info.field_nodes[0]), *path)
    found = known.get(memo)
    if found is None:
        found = known[memo] = (*path, json.dumps(arguments, sort_keys=True, default=str))
    return found


def siblings(context: RequestContext, row: Row) -> list[Row]:
    """The rows resolved together with `row` (its list level), or just itself."""
    levels = context._levels
    if context._unindexed:
        for group in context._unindexed:  # in marking order: a later mark wins
            for member in group:
                levels[id(member)] = group
        context._unindexed.clear()
    found = levels.get(id(row))
    return found if found is not None else [row]


def mark_siblings(context: RequestContext, rows: Iterable[Row]) -> list[Row]:
    group = list(rows)
    context._unindexed.append(group)
    return group


def unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))
