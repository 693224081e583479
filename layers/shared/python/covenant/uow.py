"""The unit of work: one write transaction on the writer, with its outbox rows inside it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any

from covenant.db import CommitOutcomeUnknown, Database, DatabaseUnavailable, Row, Session, writer
from covenant.events import CloudEvent

logger = logging.getLogger(__name__)

# The events travel as one JSON array (one parameter) of {aggregateType, aggregateId,
# envelope}; each row takes its id and subject (the event type) from its envelope, in the
# array's order.
_INSERT_OUTBOX = """
INSERT INTO outbox (id, subject, aggregate_type, aggregate_id, payload)
SELECT CAST(e.item -> 'envelope' ->> 'id' AS uuid), e.item -> 'envelope' ->> 'type',
       e.item ->> 'aggregateType', e.item ->> 'aggregateId', e.item -> 'envelope'
FROM jsonb_array_elements(CAST(:items AS jsonb)) WITH ORDINALITY AS e(item, n)
ORDER BY e.n
"""


class UnitOfWork:
    """`with UnitOfWork() as uow:` runs a transaction; leaving the block commits it, an
    exception rolls it back (domain rows and outbox rows alike). Callbacks registered with
    `after_commit` run only once the commit succeeded, and their failures never undo it. A
    connection lost during the COMMIT itself raises `CommitOutcomeUnknown`: the change may
    have been applied, so the caller must not simply run it again."""

    def __init__(self, database: Database | None = None) -> None:
        self._database = database or writer()
        self._session: Session | None = None
        self._after_commit: list[Callable[[], None]] = []
        self.events: list[CloudEvent] = []

    def __enter__(self) -> UnitOfWork:
        session = Session(self._database)
        session.run("BEGIN")
        self._session = session
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session = self._require_session()
        self._session = None
        if exc_type is not None:
            self._rollback(session)
            return
        try:
            session.run("COMMIT")
        except DatabaseUnavailable as lost:
            self._rollback(session)
            raise CommitOutcomeUnknown(
                f"connection lost during COMMIT, the transaction may have been applied: {lost}"
            ) from lost
        except BaseException:
            self._rollback(session)
            raise
        for callback in self._after_commit:
            try:
                callback()
            except Exception:
                logger.exception("after-commit callback failed; the transaction stays committed")

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        return self._require_session().run(sql, **params)

    def rows(self, sql: str, **params: Any) -> list[Row]:
        return self._require_session().rows(sql, **params)

    def one(self, sql: str, **params: Any) -> Row | None:
        return self._require_session().one(sql, **params)

    def scalar(self, sql: str, **params: Any) -> Any:
        return self._require_session().scalar(sql, **params)

    def add_event(self, event: CloudEvent, *, aggregate_type: str, aggregate_id: str) -> None:
        """Writes the event to the outbox in this transaction; NATS subject = event type."""
        self.add_events([event], aggregate_type=aggregate_type, aggregate_id=aggregate_id)

    def add_events(
        self, events: Sequence[CloudEvent], *, aggregate_type: str, aggregate_id: str
    ) -> None:
        """Writes the events of one aggregate to the outbox in one statement, in their order
        (a change and its audit record: one round trip, not two)."""
        self.add_outbox_events([(event, aggregate_type, aggregate_id) for event in events])

    def add_outbox_events(self, items: Sequence[tuple[CloudEvent, str, str]]) -> None:
        """Writes (event, aggregate type, aggregate id) rows to the outbox in one statement,
        in their order, each on its own aggregate (the bridge keeps each aggregate's events in
        order, so an event must carry the aggregate it is about)."""
        if not items:
            return
        rows = ",".join(
            f'{{"aggregateType":{json.dumps(kind)},"aggregateId":{json.dumps(key)},'
            f'"envelope":{event.to_json()}}}'
            for event, kind, key in items
        )
        self._require_session().run(_INSERT_OUTBOX, items=f"[{rows}]")
        self.events.extend(event for event, _, _ in items)

    def after_commit(self, callback: Callable[[], None]) -> None:
        self._after_commit.append(callback)

    def _require_session(self) -> Session:
        if self._session is None:
            raise RuntimeError("UnitOfWork used outside its `with` block")
        return self._session

    def _rollback(self, session: Session) -> None:
        try:
            session.run("ROLLBACK")
        except Exception:
            # A broken connection has already rolled back on the server; drop it.
            logger.warning("rollback failed; discarding the connection", exc_info=True)
            self._database.close()
