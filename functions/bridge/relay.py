"""Moves events from the outbox into JetStream.

One relay pass is one writer transaction holding the relay lock (`pg_advisory_xact_lock`), so
one relay publishes at a time: a second bridge waits, then continues where the first stopped,
nothing published twice, nothing skipped. The lock is what makes reading safe; no row locks
are taken. The wait is bounded (`lock_deadline`, from the invocation's remaining time) and made
of queued waits shorter than the statement timeout (`lock_timeout`, see `_Reader.begin`): when
the other relay still holds the lock at the bound, the pass ends without reading (`busy`).
A pass reads the oldest unpublished events (seq order) in batches, publishes each batch with
pipelined acknowledgements and `Nats-Msg-Id` = event id, and marks the batch's acknowledged
events published in one statement.

The database work overlaps the publishing. The pass's transaction reads on one thread (the
next batch is read while this one is published); the marks run on a second thread and
connection, one short transaction per batch (this batch is marked while the next one is
published); the pass commits, and releases the lock, once every mark has. A bridge that dies
before marking leaves the rows unpublished: the next pass publishes them again and JetStream's
duplicate window drops the copies.

Order: the events of one aggregate (a project, a country) reach their streams in commit order.
Every aggregate is a chain across the pass's batches: its next event is published only once
the previous one is acknowledged, so a failure known only at acknowledgement time (the stream
rejects the event, JetStream is briefly unavailable, the connection drops) stops the chain
before any later event of that aggregate is sent. The aggregate then waits, for the rest of
the pass, behind its failed event. Chains of different aggregates are pipelined together, and
the next batch is published as soon as it is read, while this one's last acknowledgements are
on their way (`_Publishing`): a batch is marked once its own events have all settled, and the
stream is never left idle between batches. (Two events of one aggregate are never visible out
of order: the second one's transaction waits for the first's row lock on the aggregate, so it
commits later.)

Failures are of two kinds. The event's own (the stream or the server refuses it: too large, a
4xx reply) counts an attempt; after `max_attempts` the event is set aside (`dead_at`) and its
aggregate flows again. Everything else (NATS down, no acknowledgement in time, JetStream
unavailable, no stream for the subject, a stream without a leader, an earlier copy of the
event still being stored: "duplicate message id is in process", 409) counts nothing: the
event waits for the next pass.

"No responders" is JetStream's answer both when no stream captures the subject and when the
stream that does has no leader (an election after its leader died, or a quorum of its servers
lost): only the leader listens. The relay then asks JetStream about the stream once
($JS.API.STREAM.INFO, which the bridge's NATS user may call and nothing else of the API): only
"stream not found" makes it missing (`stream_missing`: apply the topology); a stream JetStream
knows, or no answer at all (a cluster whose JetStream meta leader is gone too: then nothing can
have removed the stream), makes it leaderless (`stream_leaderless`: it flows again once a
leader is elected).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol, TypeVar

from nats.errors import MaxPayloadError, NoRespondersError
from nats.js.errors import APIError, NoStreamResponseError

from bridge.publisher import message_headers
from covenant.db import Database, Session, sqlstate
from covenant.streams import stream_for_subject

logger = logging.getLogger(__name__)

RELAY_LOCK = 0x0B71D6E  # advisory lock id: one relay publishes at a time
# A queued wait for the relay lock that ran out: lock_timeout (55P03); statement_timeout
# (57014) only as a backstop, the waits are kept shorter than it.
_LOCK_WAIT_ENDED = ("55P03", "57014")
_LOCK_SLICE_MS = 1000  # the longest queued wait when the connection has no statement timeout
# JetStream's answer to a publish whose Nats-Msg-Id an earlier copy still being stored holds
# (a clustered stream proposes it, then stores it): 409, "duplicate message id is in process".
# Not the event's fault, and not a refusal: the copy may yet be stored.
DUPLICATE_IN_PROCESS = 10158
T = TypeVar("T")

# The longest wait for JetStream's answer about a stream that answered "no responders": a
# cluster with a meta leader answers within milliseconds, one without never does.
STREAM_INFO_TIMEOUT_S = 1.0


@functools.lru_cache(maxsize=256)
def _stream_of(subject: str) -> str | None:
    spec = stream_for_subject(subject)
    return spec.name if spec is not None else None


# `seen`: what this pass already read (published, failed, or waiting behind a failure): read
# once per pass. The batch comes back as one text, a line per event and tab-separated fields,
# the payload last: pg8000 decodes result rows in Python, a value at a time, where str.split
# runs in C (and jsonb's text never holds a raw tab or newline; an aggregate id that does is
# folded, which at worst orders two aggregates as one).
#
# The read walks outbox_pending in seq order and looks each seq up in outbox (`OFFSET 0` keeps
# the lookup per seq): joined plainly, the planner merge-joins the whole outbox by seq from its
# first row, every published row of the retention before the first pending one (measured 52 000
# rows read for a batch of 2 000 once 100 000 were published).
#
# Sets of seqs travel as int8multirange text (runs of consecutive seqs: a few ranges per
# batch) rather than bigint arrays: small parameters. pg8000 does not set TCP_NODELAY, and a
# statement whose parameters overflow its 8 KiB write buffer leaves a small last segment that
# Nagle's algorithm holds until the server's delayed ACK, 40 ms later.
_CLAIM = """
SELECT string_agg(
    concat_ws(E'\\t', b.seq, b.id, b.subject, b.aggregate, b.attempts, b.erred, b.payload::text),
    E'\\n' ORDER BY b.seq)
FROM (
    SELECT o.*
    FROM outbox_pending AS p
    CROSS JOIN LATERAL (
        SELECT seq, id, subject, attempts, last_error IS NOT NULL AS erred, payload,
               translate(aggregate_type || ':' || aggregate_id, E'\\t\\n', '  ') AS aggregate
        FROM outbox
        WHERE seq = p.seq AND dead_at IS NULL
          AND created_at <= now() - make_interval(secs => CAST(:min_age AS float8))
        OFFSET 0
    ) AS o
    WHERE NOT p.seq <@ CAST(:seen AS int8multirange)
    ORDER BY p.seq
    LIMIT :limit
) AS b
"""

# Marking rewrites no outbox row: the batch's seqs leave outbox_pending and are recorded, as one
# narrow row, in outbox_published (migration 0013: the UPDATE of each ~600-byte row it replaces
# was most of PostgreSQL's share of a pass).
_MARK_PUBLISHED = """
WITH marked AS (
    DELETE FROM outbox_pending AS p
    USING unnest(CAST(:seqs AS int8multirange)) AS r(span)
    WHERE p.seq >= lower(r.span) AND p.seq < upper(r.span)
    RETURNING p.seq
)
INSERT INTO outbox_published (seqs, events)
SELECT range_agg(int8range(seq, seq, '[]')), count(*) FROM marked HAVING count(*) > 0
"""

# Events that failed before (their last_error is set) lose it once published.
_CLEAR_ERRORS = """
UPDATE outbox SET last_error = NULL
WHERE seq = ANY(CAST(:seqs AS bigint[])) AND last_error IS NOT NULL
"""

_MARK_FAILED = """
UPDATE outbox AS o
SET attempts = o.attempts + 1,
    last_error = f.error,
    dead_at = CASE WHEN o.attempts + 1 >= :max_attempts THEN now() END
FROM unnest(CAST(:ids AS uuid[]), CAST(:errors AS text[])) AS f(id, error)
WHERE o.id = f.id
"""


class Publisher(Protocol):
    """What the relay needs of JetStream (bridge.publisher.JetStreamPublisher)."""

    @property
    def max_payload(self) -> int: ...

    async def publish(
        self,
        subject: str,
        payload: bytes,
        msg_id: str,
        on_settled: Callable[[BaseException | None], None],
    ) -> None:
        """Sends the message; calls on_settled(None) on its acknowledgement, later, or
        on_settled(error)."""
        ...

    def fail_pending(self, error: BaseException) -> int:
        """Settles every publish still waiting with `error`."""
        ...

    async def stream_exists(self, stream: str, timeout_s: float) -> bool | None:
        """True: JetStream knows the stream; False: it answers "stream not found"; None: no
        answer in time."""
        ...


def _event(line: str) -> OutboxEvent:
    seq, event_id, subject, aggregate, attempts, erred, payload = line.split("\t", 6)
    return OutboxEvent(int(seq), event_id, subject, aggregate, payload, int(attempts), erred == "t")


class OutboxEvent(NamedTuple):
    seq: int
    id: str
    subject: str
    aggregate: str  # "project:<id>": the unit of ordering
    payload: str
    attempts: int
    erred: bool = False  # its last_error is set (cleared when it is published)


@dataclass
class RelayResult:
    published: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # every event not published, why
    rejected: set[str] = field(default_factory=set)  # the event's own fault: counts an attempt
    dead: list[str] = field(default_factory=list)
    stream_missing: set[str] = field(default_factory=set)  # subjects no stream took
    stream_leaderless: set[str] = field(default_factory=set)  # streams without a leader
    # What JetStream answered this pass about a stream that answered "no responders": asked
    # once per pass (stream_exists), however many batches meet it.
    streams_asked: dict[str, bool | None] = field(default_factory=dict)
    more: bool = False  # the pass stopped with a full batch: more events may wait
    busy: bool = False  # another relay held the lock until the wait's bound: nothing was read
    lock_wait_s: float = 0.0  # time spent waiting for the relay lock


@dataclass(frozen=True)
class RelaySettings:
    batch_size: int = 2000  # events read, and marked, per statement
    batches_per_pass: int = 10  # batches per pass (per turn with the relay lock)
    ack_timeout_s: float = 10.0
    max_attempts: int = 5


_threads: dict[str, ThreadPoolExecutor] = {}
_threads_lock = threading.Lock()


def _database_thread(name: str) -> ThreadPoolExecutor:
    """A thread that runs one kind of database work, in order, on its own connection (kept
    across warm invocations like the function's other connections)."""
    with _threads_lock:
        if name not in _threads:
            _threads[name] = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        return _threads[name]


class _Reader:
    """The pass's transaction: the relay lock and the reads. Runs on the reading thread."""

    def __init__(self, database: Database) -> None:
        self._database = database
        self._session: Session | None = None

    def begin(self, lock_deadline: float | None) -> bool:
        """Opens the pass's transaction and takes the relay lock, waiting for it until
        `lock_deadline` (time.monotonic(); None: no bound); False, and no transaction, when
        another relay still holds it then.

        The wait is a series of queued waits (`pg_advisory_xact_lock` under `SET LOCAL
        lock_timeout`), each shorter than the connection's statement timeout, in a fresh
        transaction each: one wait as long as the bound would need a longer statement timeout,
        and pg8000's socket timeout (the statement timeout plus the connect timeout, set in
        covenant.db) would drop the connection during it. Between two waits the relay is out of
        the lock's queue for a few round trips only, so relays still take turns."""
        session = self._session = Session(self._database)
        session.run("BEGIN")
        if session.scalar("SELECT pg_try_advisory_xact_lock(:key)", key=RELAY_LOCK):
            return True  # not contended: no timeout changed, one statement as before
        started = time.monotonic()
        statement_timeout_ms = int(
            session.scalar("SELECT setting::int FROM pg_settings WHERE name = 'statement_timeout'")
        )
        slice_ms = statement_timeout_ms // 2 if statement_timeout_ms > 0 else _LOCK_SLICE_MS
        while True:
            wait_ms = slice_ms
            if lock_deadline is not None:
                wait_ms = min(wait_ms, int((lock_deadline - time.monotonic()) * 1000))
            if wait_ms <= 0:
                self.rollback()
                return False
            session.run("SELECT set_config('lock_timeout', :ms, true)", ms=f"{wait_ms}ms")
            try:
                session.run("SELECT pg_advisory_xact_lock(:key)", key=RELAY_LOCK)
            except Exception as exc:
                if sqlstate(exc) not in _LOCK_WAIT_ENDED:
                    raise
                session.run("ROLLBACK")  # the failed wait aborted the transaction
                session.run("BEGIN")
                continue
            # The reads that follow run with the connection's own timeouts again.
            session.run("SET LOCAL lock_timeout TO DEFAULT")
            logger.info("waited %.2f s for the relay lock", time.monotonic() - started)
            return True

    def claim(self, min_age_s: float, limit: int, seen: list[int]) -> list[OutboxEvent]:
        if self._session is None:
            raise RuntimeError("relay pass transaction not begun")
        batch = self._session.scalar(_CLAIM, min_age=min_age_s, limit=limit, seen=seq_ranges(seen))
        return [_event(line) for line in batch.split("\n")] if batch else []

    def commit(self) -> None:
        if self._session is not None:
            self._session.run("COMMIT")
            self._session = None

    def rollback(self) -> None:
        if self._session is None:
            return
        try:
            self._session.run("ROLLBACK")
        except Exception:
            self._database.close()  # a connection that cannot roll back is dropped
        self._session = None


def _mark(
    database: Database,
    published: list[int],
    retried: list[int],
    rejected: dict[str, str],
    max_attempts: int,
) -> None:
    """One batch's outcome, in a transaction of its own: `published` seqs, among them the
    `retried` ones (failed before), and the `rejected` events' errors by id. Runs on the
    marking thread."""
    if not (published or rejected):
        return
    session = Session(database)
    session.run("BEGIN")
    try:
        if published:
            session.run(_MARK_PUBLISHED, seqs=seq_ranges(published))
        if retried:
            session.run(_CLEAR_ERRORS, seqs=retried)
        if rejected:
            ids = sorted(rejected)
            session.run(
                _MARK_FAILED,
                ids=ids,
                errors=[rejected[i][:1000] for i in ids],
                max_attempts=max_attempts,
            )
        session.run("COMMIT")
    except BaseException:
        try:
            session.run("ROLLBACK")
        except Exception:
            database.close()
        raise


def mark_published(database: Database, seqs: list[int]) -> None:
    """Marks these events published now, as a pass marks a batch."""
    _mark(database, seqs, [], {}, max_attempts=1)


async def relay_pass(
    database: Database,
    publisher: Publisher,
    settings: RelaySettings,
    min_age_s: float = 0.0,
    deadline: float | None = None,
    lock_deadline: float | None = None,
) -> RelayResult:
    """One pass: up to `batches_per_pass` batches under the relay lock; no batch but the first
    is read or published after `deadline` (time.monotonic()). When another relay holds the
    lock, waits for it until `lock_deadline` (None: no bound), then gives up: the result is
    `busy`, nothing read."""
    loop = asyncio.get_running_loop()
    reading, marking = _database_thread("relay-read"), _database_thread("relay-mark")
    reader = _Reader(database)
    reads: list[asyncio.Future[Any]] = []
    marks: list[asyncio.Future[Any]] = []

    def read(work: Callable[[], T]) -> asyncio.Future[T]:
        future = loop.run_in_executor(reading, work)
        reads.append(future)
        return future

    result = RelayResult()
    seen: list[int] = []
    blocked: set[str] = set()  # aggregates waiting behind a failed event, for this pass
    try:
        waiting_since = time.monotonic()
        locked = await read(functools.partial(reader.begin, lock_deadline))
        result.lock_wait_s = time.monotonic() - waiting_since
        if not locked:
            result.busy = True
            return result
        claim = functools.partial(reader.claim, min_age_s, settings.batch_size)
        claimed = read(functools.partial(claim, []))
        publishing = _Publishing(publisher, settings.ack_timeout_s, result, blocked)
        published: _Batch | None = None  # its acknowledgements may still be arriving

        def finish(batch: _Batch) -> Awaitable[None]:
            return _finish(batch, publishing, database, settings, result, marks, marking)

        for number in range(1, settings.batches_per_pass + 1):
            events = await claimed
            out_of_time = deadline is not None and time.monotonic() >= deadline
            if number > 1 and out_of_time:
                # Read ahead while the batch before was published; publishing it now could
                # outlast the invocation. Its events stay for the next pass.
                result.more = True
                break
            seen.extend(event.seq for event in events)
            full = len(events) == settings.batch_size
            last = not full or number == settings.batches_per_pass or out_of_time
            if not last:  # read the next batch while this one is published
                claimed = read(functools.partial(claim, list(seen)))
            batch = await publishing.add(events)
            if published is not None:  # its acknowledgements arrived while this one was sent
                await finish(published)
            published = batch
            if last:
                result.more = full
                break
        if published is not None:
            await finish(published)
        await _settled(marks)  # every mark committed before the lock is released
        await _settled(reads)
        await read(reader.commit)
    except BaseException:
        await _settled(marks + reads, quiet=True)
        await asyncio.shield(loop.run_in_executor(reading, reader.rollback))
        raise
    return result


async def _finish(
    batch: _Batch,
    publishing: _Publishing,
    database: Database,
    settings: RelaySettings,
    result: RelayResult,
    marks: list[asyncio.Future[Any]],
    marking: ThreadPoolExecutor,
) -> None:
    """Waits for the batch's acknowledgements, then marks it on the marking thread."""
    acknowledged = await publishing.settle(batch)
    result.published.extend(event.id for event in acknowledged)
    events = batch.events
    rejected = {e.id: result.failed[e.id] for e in events if e.id in result.rejected}
    result.dead.extend(
        e.id for e in events if e.id in rejected and e.attempts + 1 >= settings.max_attempts
    )
    mark = functools.partial(
        _mark,
        database,
        [e.seq for e in acknowledged],
        [e.seq for e in acknowledged if e.erred],
        rejected,
        settings.max_attempts,
    )
    marks.append(asyncio.get_running_loop().run_in_executor(marking, mark))
    _raise_failed(marks)  # a failed mark ends the pass: its events go again


def _raise_failed(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        if future.done() and not future.cancelled():
            error = future.exception()
            if error is not None:
                raise error


async def _settled(futures: list[asyncio.Future[Any]], quiet: bool = False) -> None:
    """Waits for the database work already submitted; raises its first error unless quiet."""
    outcomes = await asyncio.gather(*futures, return_exceptions=True)
    futures.clear()
    if not quiet:
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome


def seq_ranges(seqs: Iterable[int]) -> str:
    """The int8multirange literal of a set of seqs: "{[1,4),[7,8)}" for 1, 2, 3, 7."""
    ranges: list[str] = []
    start = end = None
    for seq in sorted(set(seqs)):
        if start is None or end is None:
            start = end = seq
        elif seq == end + 1:
            end = seq
        else:
            ranges.append(f"[{start},{end + 1})")
            start = end = seq
    if start is not None and end is not None:
        ranges.append(f"[{start},{end + 1})")
    return "{" + ",".join(ranges) + "}"


async def publish_in_order(
    events: list[OutboxEvent],
    publisher: Publisher,
    ack_timeout_s: float,
    result: RelayResult,
    blocked: set[str],
) -> list[OutboxEvent]:
    """Publishes `events` (seq order), each aggregate's in order, all aggregates pipelined;
    returns the acknowledged ones and records every failure in `result`. An aggregate in
    `blocked` publishes nothing; one whose event fails is added to it. Gives up on what is
    still unacknowledged when no acknowledgement arrived for `ack_timeout_s`."""
    publishing = _Publishing(publisher, ack_timeout_s, result, blocked)
    return await publishing.settle(await publishing.add(events))


@dataclass(eq=False)
class _Batch:
    events: list[OutboxEvent]
    outstanding: set[str] = field(default_factory=set)  # sent or queued, not yet settled
    acknowledged: list[OutboxEvent] = field(default_factory=list)
    unanswered: dict[str | None, list[OutboxEvent]] = field(default_factory=dict)  # by stream


class _Publishing:
    """A pass's publishing. Every aggregate is a chain that runs across the pass's batches:
    its next event is sent once the previous one is acknowledged, whichever batch either is
    in. So the next batch can be published while this one's last acknowledgements are on
    their way (`add` before `settle`): a batch no longer ends with the stream idle for a round
    trip, and the order within an aggregate is the same. Invariant: an aggregate has a chain
    exactly when the chain's first event is in flight."""

    def __init__(
        self, publisher: Publisher, ack_timeout_s: float, result: RelayResult, blocked: set[str]
    ) -> None:
        self._publisher = publisher
        self._ack_timeout_s = ack_timeout_s
        self._result = result
        self._blocked = blocked
        self._chains: dict[str, deque[OutboxEvent]] = {}
        self._batch_of: dict[str, _Batch] = {}  # event id -> its batch, until settled
        self._in_flight: dict[str, OutboxEvent] = {}
        self._settled: deque[tuple[OutboxEvent, BaseException | None]] = deque()
        self._arrived = asyncio.Event()
        self._max_size = publisher.max_payload

    async def add(self, events: list[OutboxEvent]) -> _Batch:
        """Queues `events` behind their aggregates' chains and sends the first event of each
        new chain. A blocked aggregate's events are left out (they stay in the outbox)."""
        batch = _Batch(events)
        heads: list[OutboxEvent] = []
        for event in events:
            if event.aggregate in self._blocked:
                continue
            batch.outstanding.add(event.id)
            self._batch_of[event.id] = batch
            chain = self._chains.get(event.aggregate)
            if chain is None:
                self._chains[event.aggregate] = deque((event,))
                heads.append(event)
            else:
                chain.append(event)
        for event in heads:
            await self._send(event)
        return batch

    async def settle(self, batch: _Batch) -> list[OutboxEvent]:
        """Waits until every event of `batch` is acknowledged, failed, or left behind a
        failure (meanwhile later batches' events flow); returns the acknowledged ones."""
        while batch.outstanding:
            if not self._settled:
                if not self._in_flight:
                    raise RuntimeError("relay: events queued behind no publish in flight")
                self._arrived.clear()
                try:
                    async with asyncio.timeout(self._ack_timeout_s):
                        await self._arrived.wait()
                except TimeoutError:
                    silent = TimeoutError(f"no acknowledgement within {self._ack_timeout_s:g} s")
                    self._publisher.fail_pending(silent)
                    self._settled.extend(
                        (e, silent)
                        for e in self._in_flight.values()
                        if (e, silent) not in self._settled
                    )
            while self._settled:
                await self._on_settled(*self._settled.popleft())
        for stream, unheard in batch.unanswered.items():
            await _no_responders(stream, unheard, self._publisher, self._result)
        return batch.acknowledged

    def _arrive(self, event: OutboxEvent, error: BaseException | None) -> None:
        self._settled.append((event, error))
        self._arrived.set()

    async def _on_settled(self, event: OutboxEvent, error: BaseException | None) -> None:
        if self._in_flight.pop(event.id, None) is None:
            return  # settled twice (a publish timed out here, then failed there)
        batch = self._batch_of[event.id]
        if isinstance(error, NoStreamResponseError | NoRespondersError):
            batch.unanswered.setdefault(_stream_of(event.subject), []).append(event)
            self._block(event.aggregate)
            return
        failure = _failure(event, error, self._result)
        if failure is not None:
            self._fail(event, failure, rejected=event.id in self._result.rejected)
            return
        batch.acknowledged.append(event)
        self._done(event)
        chain = self._chains[event.aggregate]
        chain.popleft()
        if chain:
            await self._send(chain[0])
        else:
            del self._chains[event.aggregate]

    async def _send(self, event: OutboxEvent) -> None:
        payload = event.payload.encode("utf-8")
        size = message_size(payload, event.id)
        if size > self._max_size:
            self._fail(
                event,
                f"event of {size} bytes exceeds the {self._max_size}-byte limit",
                rejected=True,
            )
            return
        self._in_flight[event.id] = event
        try:
            await self._publisher.publish(
                event.subject, payload, event.id, functools.partial(self._arrive, event)
            )
        except MaxPayloadError as exc:
            del self._in_flight[event.id]
            self._fail(event, f"rejected by the server: {exc}", rejected=True)
        except Exception as exc:  # not connected: the chain waits for the next pass
            del self._in_flight[event.id]
            self._fail(event, f"{type(exc).__name__}: {exc}")

    def _fail(self, event: OutboxEvent, reason: str, *, rejected: bool = False) -> None:
        self._result.failed[event.id] = reason
        if rejected:
            self._result.rejected.add(event.id)
        self._block(event.aggregate)

    def _block(self, aggregate: str) -> None:
        """The aggregate waits, for the rest of the pass, behind its event that failed (the
        chain's first): its queued events are left in the outbox."""
        self._blocked.add(aggregate)
        for event in self._chains.pop(aggregate, ()):
            self._done(event)

    def _done(self, event: OutboxEvent) -> None:
        batch = self._batch_of.pop(event.id, None)
        if batch is not None:
            batch.outstanding.discard(event.id)


async def _no_responders(
    stream: str | None, events: list[OutboxEvent], publisher: Publisher, result: RelayResult
) -> None:
    """Records why `events` (all of `stream`, None: of no stream the topology defines) were
    answered "no responders": a missing stream, or one without a leader. Neither is the
    events' fault: no attempt counts."""
    if stream is None:
        exists: bool | None = False
    elif stream in result.streams_asked:
        exists = result.streams_asked[stream]
    else:
        exists = await publisher.stream_exists(stream, STREAM_INFO_TIMEOUT_S)
        result.streams_asked[stream] = exists
    for event in events:
        if exists is False:
            result.stream_missing.add(event.subject)
            reason = f"no JetStream stream captures {event.subject}"
        elif exists:
            result.stream_leaderless.add(str(stream))
            reason = f"stream {stream} has no leader (no responders)"
        else:
            result.stream_leaderless.add(str(stream))
            reason = f"stream {stream} has no leader, nor JetStream (no answer about it)"
        result.failed[event.id] = reason


def _header_block(msg_id: str) -> bytes:
    lines = "".join(f"{key}: {value}\r\n" for key, value in message_headers(msg_id).items())
    return f"NATS/1.0\r\n{lines}\r\n".encode()


# The header block without the event id's characters: the id is its only part that varies.
_HEADER_BLOCK_BYTES = len(_header_block(""))


def message_size(payload: bytes, msg_id: str) -> int:
    """What the server counts against max_payload: the payload and the header block carrying
    Content-Type and Nats-Msg-Id (nats-py checks the payload alone, and the server closes the
    connection of a client that sends more). Counted, not built, once per event."""
    return len(payload) + _HEADER_BLOCK_BYTES + len(msg_id.encode())


def _failure(event: OutboxEvent, error: BaseException | None, result: RelayResult) -> str | None:
    """Why a publish failed (None: acknowledged). A rejection by the stream (4xx) is also
    recorded in result.rejected: it counts an attempt."""
    if error is None:
        return None
    if isinstance(error, APIError) and error.err_code == DUPLICATE_IN_PROCESS:
        # An earlier copy (a publish whose acknowledgement did not come in time) is still
        # being stored: the next pass gets its duplicate acknowledgement.
        return f"an earlier copy is still being stored: {error.description or error}"
    if isinstance(error, APIError):
        # 4xx: the event itself is refused; 5xx (503: JetStream unavailable) is not its fault.
        if error.code is not None and 400 <= error.code < 500:
            result.rejected.add(event.id)
        return f"rejected by the stream: {error.description or error}"
    # The connection dropped, or no acknowledgement came in time: the next pass retries it.
    return str(error) if isinstance(error, TimeoutError) else f"{type(error).__name__}: {error}"


def outbox_lag_seconds(database: Database) -> float:
    """Age of the oldest unpublished event, set-aside ones apart (0 when there is none).

    seq and created_at are taken in the same insert, so the oldest is among the lowest seqs
    (concurrent inserts may swap them by microseconds): the first 100 are enough. Looked up
    per seq, as in the read (_CLAIM)."""
    with database.session() as session:
        lag = session.scalar(
            "SELECT COALESCE(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 FROM ("
            "SELECT o.created_at FROM outbox_pending AS p CROSS JOIN LATERAL ("
            "SELECT created_at FROM outbox WHERE seq = p.seq AND dead_at IS NULL OFFSET 0) AS o "
            "ORDER BY p.seq LIMIT 100) AS oldest"
        )
    return float(lag or 0.0)


# The batches published before the retention, oldest first, while they add up to `limit`
# events (the one that crosses it included); their outbox rows, then the batches, go.
_PRUNE = """
WITH due AS (
    SELECT id, seqs
    FROM (
        SELECT id, seqs, events, sum(events) OVER (ORDER BY id) AS running
        FROM outbox_published
        WHERE published_at < now() - make_interval(secs => CAST(:retention AS float8))
    ) AS d
    WHERE running - events < :limit
),
batches AS (
    DELETE FROM outbox_published WHERE id IN (SELECT id FROM due)
),
pruned AS (
    DELETE FROM outbox AS o
    USING due, unnest(due.seqs) AS r(span)
    WHERE o.seq >= lower(r.span) AND o.seq < upper(r.span)
    RETURNING 1
)
SELECT count(*) FROM pruned
"""


def prune_published(database: Database, retention_s: int, limit: int = 10_000) -> int:
    """Deletes the events published before the retention, about `limit` per run (whole
    batches, the oldest first)."""
    with database.session() as session:
        pruned = session.scalar(_PRUNE, retention=retention_s, limit=limit)
    return int(pruned)


def unpublished(database: Database, event_ids: list[str]) -> set[str]:
    """The ids among event_ids that are in the outbox and not yet published."""
    if not event_ids:
        return set()
    with database.session() as session:
        rows = session.run(
            "SELECT o.id::text FROM outbox AS o JOIN outbox_pending AS p ON p.seq = o.seq "
            "WHERE o.id = ANY(CAST(:ids AS uuid[]))",
            ids=event_ids,
        )
    return {row[0] for row in rows}
