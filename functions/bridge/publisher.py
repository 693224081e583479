"""The relay's JetStream publisher, on nats-py's public client API rather than on its
JetStreamContext.publish_async, which the relay cannot use as it is:

- a publish the stream rejects never completes (nats-py 2.16's reply handler raises the
  APIError instead of failing the future with it), so the relay waited out its ack timeout and
  never counted the rejection;
- publishes made while reconnecting go into a buffer, sent later behind the relay's back, and
  unacknowledged publishes stay pending forever when the connection drops;
- it costs about 60% more of the client's CPU per event (a semaphore, a random token per
  message, a dataclass per acknowledgement), and the relay is bound by the client's CPU.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

logger = logging.getLogger(__name__)

_NO_RESPONDERS = "503"  # the status of the reply when nothing (no stream) took the message
STREAM_NOT_FOUND = 10059  # JetStream's err_code for a stream that does not exist
# The CloudEvents NATS protocol binding reads a message without this header as binary mode
# (attributes in headers, data in the payload); the outbox stores the structured JSON envelope.
CLOUDEVENTS_CONTENT_TYPE = "application/cloudevents+json"


def message_headers(msg_id: str) -> dict[str, str]:
    """The headers of an event's message: structured-mode CloudEvents, and the event id as
    Nats-Msg-Id so the stream's duplicate window drops a retried publish."""
    return {"Content-Type": CLOUDEVENTS_CONTENT_TYPE, "Nats-Msg-Id": msg_id}


class NotConnected(nats.errors.Error):
    """The connection to NATS is down: what was not acknowledged waits for the next pass."""

    def __init__(self, reason: str = "connection to NATS lost") -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


Settled = Callable[[BaseException | None], None]


class JetStreamPublisher:
    """Publishes into JetStream with pipelined acknowledgements. Every message carries a reply
    subject under one inbox subscription of the publisher's; the stream that stores the message
    answers there with its acknowledgement, or with an error. `publish` returns once the message
    is sent; `on_settled` is called later, once, with the outcome:

    - None: stored (or dropped as a duplicate of a stored `Nats-Msg-Id`);
    - NoStreamResponseError: no stream captures the subject;
    - nats.js.errors.APIError (or its subclass for the code): the stream refused the message;
    - what `fail_pending` is given: the connection dropped first (NotConnected), or the relay
      stopped waiting.
    """

    def __init__(self, client: Client) -> None:
        self._client = client
        self._prefix = ""
        self._waiting: dict[str, Settled] = {}
        self._sent = 0

    async def start(self) -> None:
        """Subscribes to the replies; after connect(), whose inbox_prefix new_inbox() uses
        (before it, the default `_INBOX.`, which the bridge's NATS user may not receive on)."""
        self._prefix = f"{self._client.new_inbox()}."
        await self._client.subscribe(f"{self._prefix}*", cb=self._on_reply)

    @property
    def max_payload(self) -> int:
        """The largest message, headers included, the server accepts; the server closes the
        connection of a client that sends a larger one."""
        return int(self._client.max_payload)

    async def publish(self, subject: str, payload: bytes, msg_id: str, on_settled: Settled) -> None:
        """Either raises, and on_settled is never called, or returns, and it is called once."""
        if not self._client.is_connected:
            raise NotConnected("not connected to NATS")
        self._sent += 1
        token = str(self._sent)
        self._waiting[token] = on_settled
        try:
            await self._client.publish(
                subject, payload, reply=self._prefix + token, headers=message_headers(msg_id)
            )
        except BaseException:
            if self._waiting.pop(token, None) is not None:
                raise
            # The connection dropped while sending: fail_pending has settled it already.

    async def stream_exists(self, stream: str, timeout_s: float) -> bool | None:
        """Whether JetStream knows `stream` ($JS.API.STREAM.INFO, the one JetStream API call
        the bridge's NATS user may make): True when it answers with the stream, False when it
        answers "stream not found", None when nothing answers in time or it answers
        otherwise (a cluster without a JetStream meta leader: 503, or no answer at all)."""
        try:
            reply = await self._client.request(
                f"$JS.API.STREAM.INFO.{stream}", b"", timeout=timeout_s
            )
        except (nats.errors.Error, TimeoutError):  # no answer, or the connection dropped
            return None
        try:
            answer = json.loads(reply.data)
        except ValueError:
            return None
        if not isinstance(answer, dict):
            return None
        error = answer.get("error")
        if isinstance(error, dict):
            return False if error.get("err_code") == STREAM_NOT_FOUND else None
        return "config" in answer

    async def _on_reply(self, msg: Msg) -> None:
        on_settled = self._waiting.pop(msg.subject[len(self._prefix) :], None)
        if on_settled is not None:
            on_settled(_outcome(msg))

    def fail_pending(self, error: BaseException) -> int:
        """Settles every publish still waiting for its acknowledgement with `error`; returns
        how many there were."""
        waiting, self._waiting = self._waiting, {}
        for on_settled in waiting.values():
            on_settled(error)
        return len(waiting)

    async def connection_lost(self) -> None:
        """nats-py's disconnected callback."""
        failed = self.fail_pending(NotConnected("connection to NATS lost before the ack"))
        if failed:
            logger.warning("NATS connection lost with %d publish(es) unacknowledged", failed)


def _outcome(msg: Msg) -> BaseException | None:
    """What the stream's reply says: None for an acknowledgement, else the error."""
    headers = msg.headers
    if headers:
        status = headers.get("Status")
        if status == _NO_RESPONDERS:
            return nats.js.errors.NoStreamResponseError()
        if status:
            return nats.js.errors.APIError(code=int(status), description=headers.get("Description"))
    if b'"error"' not in msg.data:
        return None  # an acknowledgement: {"stream": ..., "seq": ...}; no need to parse it
    reply = json.loads(msg.data)
    error = reply.get("error") if isinstance(reply, dict) else None
    return _api_error(error) if error else None


def _api_error(error: dict[str, Any]) -> nats.js.errors.APIError:
    """The APIError (subclass by code: 503 ServiceUnavailableError, 400 BadRequestError, ...)
    of a stream's error reply; nats-py's from_error raises it rather than returning it."""
    try:
        nats.js.errors.APIError.from_error(error)
    except nats.js.errors.APIError as exc:
        return exc
    return nats.js.errors.APIError(
        code=error.get("code"), description=error.get("description"), err_code=error.get("err_code")
    )
