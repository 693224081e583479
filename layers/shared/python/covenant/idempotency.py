"""Powertools Idempotency persistence in PostgreSQL (the primary).

Why not DynamoDB: a client that retries after a regional failover must find its first attempt's
record, so the store has to be global and strongly consistent; the Aurora primary already is
(secondaries forward writes to it), while DynamoDB would need a global table, whose replication
is asynchronous, plus another service to run. The cost is one small write before and after a
mutation on the primary, which the mutation pays anyway.

Semantics follow Powertools' DynamoDB layer: a put succeeds when the key is new, its record
expired, or it is INPROGRESS past its in-progress expiry (the first attempt's Lambda died),
with one exception. The request's first committed write marks its record `applied`, inside
that write's transaction (`mark_applied`), so the record knows whether a write committed even
when the attempt does not: an attempt that died, or whose COMMIT lost its connection, leaves
the record to a retry only if nothing was applied. Otherwise running the request again would
write twice, and the retry gets `lost_answer` instead (the request was applied; its answer is
gone), as does every later retry of the key.

A replay answers the first answer byte for byte: Powertools stores a result as JSON with its
keys sorted, which reorders a GraphQL answer (whose fields follow the query's selection), so
the answer travels as its own JSON text inside the record (`ANSWERS`, the decorator's
`output_serializer`), and the lost answer is stored the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyItemAlreadyExistsError,
    IdempotencyItemNotFoundError,
)
from aws_lambda_powertools.utilities.idempotency.persistence.base import BasePersistenceLayer
from aws_lambda_powertools.utilities.idempotency.persistence.datarecord import DataRecord
from aws_lambda_powertools.utilities.idempotency.serialization.base import (
    BaseIdempotencySerializer,
)

from covenant.db import Database, Session, writer
from covenant.uow import UnitOfWork

_COLUMNS = "id, status, expiration, in_progress_expiration, response_data, payload_hash"
_READ = f"{_COLUMNS}, applied"

_PUT = f"""
INSERT INTO idempotency_records ({_COLUMNS})
VALUES (:id, :status, :expiration, :in_progress_expiration, :response_data, :payload_hash)
ON CONFLICT (id) DO UPDATE
    SET status = EXCLUDED.status,
        expiration = EXCLUDED.expiration,
        in_progress_expiration = EXCLUDED.in_progress_expiration,
        response_data = EXCLUDED.response_data,
        payload_hash = EXCLUDED.payload_hash,
        applied = false,
        updated_at = now()
    WHERE idempotency_records.expiration < :now
       OR (idempotency_records.status = 'INPROGRESS'
           AND idempotency_records.in_progress_expiration IS NOT NULL
           AND idempotency_records.in_progress_expiration < :now_ms
           AND NOT idempotency_records.applied)
RETURNING id
"""

# An applied request whose attempt ended without its answer: the record becomes the lost
# answer, once. `own` = settled by the attempt itself; otherwise only past its in-progress expiry.
_SETTLE_APPLIED = f"""
UPDATE idempotency_records
SET status = 'COMPLETED', in_progress_expiration = NULL, response_data = :response_data,
    updated_at = now()
WHERE id = :id AND status = 'INPROGRESS' AND applied
  AND (CAST(:own AS boolean) OR in_progress_expiration < :now_ms) AND expiration >= :now
RETURNING {_READ}
"""


@dataclass
class _Attempt:
    record_id: str | None = None  # set once this attempt holds its record
    applied: bool = False  # a write of this attempt has committed, marking the record


_attempt: ContextVar[_Attempt | None] = ContextVar("covenant_idempotency", default=None)


@contextmanager
def tracking() -> Iterator[None]:
    """Scopes one request: the record its attempt takes is the one `mark_applied` marks."""
    token = _attempt.set(_Attempt())
    try:
        yield
    finally:
        _attempt.reset(token)


def mark_applied(uow: UnitOfWork) -> None:
    """Inside a write transaction of a request with an idempotency key: marks its record
    applied, in that transaction (once per request: later writes find it marked)."""
    attempt = _attempt.get()
    if attempt is None or attempt.record_id is None or attempt.applied:
        return
    uow.run("UPDATE idempotency_records SET applied = true WHERE id = :id", id=attempt.record_id)
    uow.after_commit(lambda: setattr(attempt, "applied", True))


class OrderedAnswers(BaseIdempotencySerializer):
    """An answer (a JSON object) kept as its JSON text, so that its keys keep their order."""

    def to_dict(self, data: Any) -> dict[str, Any]:
        return {"answer": json.dumps(data, ensure_ascii=False, separators=(",", ":"))}

    def from_dict(self, data: dict[str, Any]) -> Any:
        if set(data) != {"answer"}:
            return data  # a record stored before answers kept their order: the same answer
        return json.loads(data["answer"])


ANSWERS = OrderedAnswers()


class PostgresPersistenceLayer(BasePersistenceLayer):
    def __init__(self, *, lost_answer: dict[str, Any], database: Database | None = None) -> None:
        """`lost_answer`: the response replayed for a request that was applied but whose
        attempt ended without recording its answer (its decorator's output_serializer must
        be ANSWERS, as this layer stores it so)."""
        super().__init__()  # type: ignore[no-untyped-call]
        self._database = database
        self._lost_answer = json.dumps(ANSWERS.to_dict(lost_answer))

    @property
    def database(self) -> Database:
        return self._database or writer()

    def _get_record(self, idempotency_key: str) -> DataRecord:
        with self.database.session() as session:
            row = session.one(
                f"SELECT {_COLUMNS} FROM idempotency_records WHERE id = :id AND expiration >= :now",
                id=idempotency_key,
                now=int(time.time()),
            )
        if row is None:
            raise IdempotencyItemNotFoundError
        return _to_record(row)

    def _put_record(self, data_record: DataRecord) -> None:
        now = time.time()
        with self.database.session() as session:
            inserted = session.run(
                _PUT,
                **_params(data_record),
                now=int(now),
                now_ms=int(now * 1000),
            )
            if inserted:
                attempt = _attempt.get()
                if attempt is not None:
                    attempt.record_id = data_record.idempotency_key
                return
            row = session.one(
                f"SELECT {_READ} FROM idempotency_records WHERE id = :id",
                id=data_record.idempotency_key,
            )
            if row is None:
                raise IdempotencyItemAlreadyExistsError
            # The same key with another request is the client's mistake, not a replay.
            self._validate_payload(data_payload=data_record, stored_data_record=_to_record(row))
            if row["status"] == "INPROGRESS" and row["applied"]:
                row = self._settle_applied(session, data_record, own=False) or row
        raise IdempotencyItemAlreadyExistsError(old_data_record=_to_record(row))

    def _update_record(self, data_record: DataRecord) -> None:
        with self.database.session() as session:
            session.run(
                "UPDATE idempotency_records SET status = :status, expiration = :expiration, "
                "in_progress_expiration = :in_progress_expiration, "
                "response_data = :response_data, payload_hash = :payload_hash, "
                "updated_at = now() WHERE id = :id",
                **_params(data_record),
            )

    def _delete_record(self, data_record: DataRecord) -> None:
        """The attempt failed: its retry may run again, unless a write of it was applied (a
        COMMIT that lost its connection may have been); then the retry gets `lost_answer`."""
        with self.database.session() as session:
            deleted = session.run(
                "DELETE FROM idempotency_records WHERE id = :id AND NOT applied RETURNING id",
                id=data_record.idempotency_key,
            )
            if not deleted:
                self._settle_applied(session, data_record, own=True)

    def _settle_applied(
        self, session: Session, data_record: DataRecord, *, own: bool
    ) -> dict[str, Any] | None:
        now = time.time()
        return session.one(
            _SETTLE_APPLIED,
            id=data_record.idempotency_key,
            response_data=self._lost_answer,
            own=own,
            now=int(now),
            now_ms=int(now * 1000),
        )


def _params(record: DataRecord) -> dict[str, Any]:
    return {
        "id": record.idempotency_key,
        "status": record.status,
        "expiration": record.expiry_timestamp,
        "in_progress_expiration": record.in_progress_expiry_timestamp,
        "response_data": record.response_data or None,
        "payload_hash": record.payload_hash or None,
    }


def _to_record(row: dict[str, Any]) -> DataRecord:
    return DataRecord(
        idempotency_key=row["id"],
        status=row["status"],
        expiry_timestamp=row["expiration"],
        in_progress_expiry_timestamp=row["in_progress_expiration"],
        response_data=row["response_data"] or "",
        payload_hash=row["payload_hash"] or "",
    )
