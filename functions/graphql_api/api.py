"""One GraphQL HTTP request, from API Gateway event to response: transport, identity,
limits, idempotency, execution, metrics. Nothing here knows a resolver."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools import Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.idempotency import IdempotencyConfig, idempotent_function
from aws_lambda_powertools.utilities.idempotency.exceptions import (
    IdempotencyAlreadyInProgressError,
    IdempotencyInconsistentStateError,
    IdempotencyPersistenceLayerError,
    IdempotencyValidationError,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from graphql import OperationType
from pg8000.exceptions import DatabaseError

from covenant import handoff, idempotency, position
from covenant.config import env, settings
from covenant.db import DatabaseUnavailable, reader, record_statements, writer
from covenant.handoff import HopFailed
from covenant.idempotency import PostgresPersistenceLayer
from covenant.project_rules import SECTOR_IDS
from covenant.regions import load_regions
from covenant.revocation import is_revoked
from graphql_api import engine, transport
from graphql_api.auth import Actor, InvalidToken, actor_from_event
from graphql_api.context import RequestContext
from graphql_api.explorer import CovenantExplorer, page_origin
from graphql_api.schema import executable_schema

logger = logging.getLogger(__name__)
SESSION_ENDED = "This session has ended (signed out or role changed): sign in again."

tracer = Tracer()
prepare = tracer.capture_method(capture_response=False)(engine.prepare)
execute_operation = tracer.capture_method(capture_response=False)(engine.run)
_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")
# What a retry gets when the first attempt's Lambda died after committing its writes, before it
# could record its answer: running the request again would write twice.
persistence = PostgresPersistenceLayer(
    lost_answer={
        "data": None,
        "errors": [
            {
                "message": "This request was applied, but the server handling it stopped before "
                "it could answer. Read the data to see the result; do not send the request again "
                "with a new Idempotency-Key.",
                "extensions": {"code": "INTERNAL_SERVER_ERROR", "applied": True},
            }
        ],
    }
)
idempotency_config = IdempotencyConfig(
    event_key_jmespath="[actor, key]",
    payload_validation_jmespath="body",
    expires_after_seconds=24 * 3600,
    use_local_cache=False,
)


@dataclass(frozen=True)
class GraphQLSettings:
    limits: engine.Limits
    explorer: bool
    max_body_bytes: int
    cors_origins: tuple[str, ...]

    @classmethod
    def load(cls) -> GraphQLSettings:
        local = settings().stage == "local"

        def flag(name: str, default: bool) -> bool:
            raw = env(name)
            return default if raw in (None, "") else raw.lower() in ("1", "true", "on", "yes")

        def number(name: str, default: int) -> int:
            raw = env(name)
            return default if raw in (None, "") else int(raw)

        return cls(
            limits=engine.Limits(
                max_depth=number("GRAPHQL_MAX_DEPTH", 12),
                max_cost=number("GRAPHQL_MAX_COST", 50_000),
                max_operations=number("GRAPHQL_MAX_OPERATIONS", 10),
                max_mutations=number("GRAPHQL_MAX_MUTATIONS", 10),
                max_statements=number("GRAPHQL_MAX_STATEMENTS", 64),
                introspection=flag("GRAPHQL_INTROSPECTION", local),
                known_list_sizes=_known_list_sizes(),
                max_tokens=number("GRAPHQL_MAX_TOKENS", 1000),
                max_repeats=number("GRAPHQL_MAX_REPEATS", 50),
            ),
            explorer=flag("GRAPHQL_EXPLORER", local),
            max_body_bytes=number("GRAPHQL_MAX_BODY_BYTES", 65_536),
            cors_origins=tuple(o for o in (env("CORS_ALLOWED_ORIGINS") or "").split(",") if o),
        )


def _known_list_sizes() -> dict[str, int]:
    regions = len(load_regions())
    return {
        "Query.regions": regions,
        "Query.regionalStats": regions,
        "Query.sectors": len(SECTOR_IDS),
        "Query.sectoralStats": len(SECTOR_IDS),
        "RegionalStats.projectsByStatus": 4,
        "GlobalStats.projectsByStatus": 4,
        "SectoralStats.projectsByStatus": 4,
    }


def _cors_headers(event: dict[str, Any], config: GraphQLSettings) -> dict[str, str]:
    origin = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}.get("origin")
    if not origin or not (origin in config.cors_origins or "*" in config.cors_origins):
        return {}
    return {
        "Access-Control-Allow-Origin": origin,
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": (
            f"Authorization, Content-Type, Idempotency-Key, {position.MIN_HEADER}"
        ),
        "Access-Control-Expose-Headers": position.HEADER,
        "Access-Control-Max-Age": "600",
        "Vary": "Origin",
    }


def serve(event: dict[str, Any], context: LambdaContext, metrics: Metrics) -> dict[str, Any]:
    started = time.perf_counter()
    metrics.add_metric("Requests", MetricUnit.Count, 1)
    config = GraphQLSettings.load()
    cors = _cors_headers(event, config)
    method = str(event.get("requestContext", {}).get("http", {}).get("method", "")).upper()
    if method == "OPTIONS" and transport.body_is_text(event):  # else parse_event says 400
        return {"statusCode": 204, "headers": cors, "body": ""}
    request_id = str(event.get("requestContext", {}).get("requestId") or context.aws_request_id)
    try:
        request = transport.parse_event(
            event, max_body_bytes=config.max_body_bytes, explorer=config.explorer
        )
    except transport.ExplorerRequested:
        region = settings().region
        explorer = CovenantExplorer(
            f"Covenant GraphQL ({region})",
            env("GRAPHQL_EXPLORER_ASSETS_URL"),
            env("GRAPHQL_SUBSCRIPTIONS_URL"),
            page_origin(event.get("headers") or {}),
        )
        return {
            "statusCode": 200,
            "headers": {
                "Content-Type": "text/html; charset=utf-8",
                "Content-Security-Policy": explorer.content_security_policy,
                **cors,
            },
            "body": explorer.html(None),
        }
    except transport.TransportError as error:
        metrics.add_metric("RequestErrors", MetricUnit.Count, 1)
        refused = transport.error_body(error.message)
        _count_errors(metrics, refused)
        metrics.add_metric(
            "Latency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000
        )
        return transport.response(
            error.status, refused, error.media_type, {**error.headers, **cors}
        )
    outcome = _execute(event, context, request, config, request_id, metrics)
    if isinstance(outcome, Relayed):
        metrics.add_metric(
            "Latency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000
        )
        return {**outcome.response, "headers": {**outcome.response.get("headers", {}), **cors}}
    status, body = outcome
    _count_errors(metrics, body)
    metrics.add_metric("Latency", MetricUnit.Milliseconds, (time.perf_counter() - started) * 1000)
    headers = {"Allow": "POST"} if status == 405 else {}
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
    written_at = (body.get("extensions") or {}).get("position")
    if isinstance(written_at, str):
        headers[position.HEADER] = written_at
    return transport.response(status, body, request.media_type, {**headers, **cors})


@dataclass(frozen=True)
class Relayed:
    """A whole proxy response that this function did not execute: the primary region's answer
    to a request handed off to it, or the answer to a hop that failed."""

    response: dict[str, Any]


def _count_errors(metrics: Metrics, body: dict[str, Any]) -> None:
    """One `Errors<Code>` metric per error the client gets (e.g. ErrorsBadUserInput)."""
    for error in body.get("errors", []):
        code = str((error.get("extensions") or {}).get("code", "INTERNAL_SERVER_ERROR"))
        metrics.add_metric(f"Errors{code.title().replace('_', '')}", MetricUnit.Count, 1)


def _execute(
    event: dict[str, Any],
    context: LambdaContext,
    request: transport.GraphQLRequest,
    config: GraphQLSettings,
    request_id: str,
    metrics: Metrics,
) -> tuple[int, dict[str, Any]] | Relayed:
    schema = executable_schema()
    origin = handoff.handed_off_from(event)
    if origin is not None and not handoff.is_primary():
        return _primary_moved(request, request_id)
    try:
        actor = actor_from_event(event)  # first, as API Gateway's authorizer would
    except InvalidToken as exc:
        logger.info("token refused: %s", exc)
        metrics.add_metric("Unauthorized", MetricUnit.Count, 1)
        return 401, transport.error_body("The token is not valid.", code="UNAUTHENTICATED")
    request_error_status = 400 if request.media_type == transport.GRAPHQL_RESPONSE else 200
    try:
        prepared = prepare(
            schema, request.query, request.variables, request.operation_name, config.limits
        )
    except engine.RequestErrors as failure:
        metrics.add_metric("RequestErrors", MetricUnit.Count, 1)
        return request_error_status, {"errors": failure.errors}
    if prepared.operation.operation == OperationType.SUBSCRIPTION:
        metrics.add_metric("RequestErrors", MetricUnit.Count, 1)
        return request_error_status, transport.error_body(
            "Subscriptions are served over WebSocket (graphql-transport-ws) at this same path, "
            "not over HTTP: see docs/realtime.md."
        )
    if prepared.is_mutation and request.method == "GET":
        return 405, transport.error_body("Mutations need POST: GET may only run queries.")
    read_primary = False
    if prepared.is_mutation and handoff.must_hand_off(event):
        return _hand_off(event, request, request_id, "mutation")
    if not prepared.is_mutation:
        try:
            min_position = _min_position(request)
        except position.BadPosition as bad:
            metrics.add_metric("RequestErrors", MetricUnit.Count, 1)
            return request_error_status, transport.error_body(str(bad), field=position.MIN_HEADER)
        if min_position is not None:
            # Handed off: the secondary already waited for its replica; the primary answers.
            if origin is None and position.replica_has(min_position):
                pass
            elif handoff.must_hand_off(event):
                return _hand_off(event, request, request_id, "position")
            else:
                read_primary = True
    if prepared.is_mutation and actor.authenticated:
        try:
            signed_out = _signed_out(actor)
        except (DatabaseUnavailable, DatabaseError):  # unreachable, timed out, a conflict
            logger.exception("sign-out check failed")
            return _unavailable(request, request_id)
        if signed_out:
            metrics.add_metric("Unauthorized", MetricUnit.Count, 1)
            return 401, transport.error_body(SESSION_ENDED, code="UNAUTHENTICATED")
    key = request.headers.get("idempotency-key")
    request_context = RequestContext(
        actor=actor,
        region=origin or settings().region,  # where the client asked, as audit events say
        request_id=request_id,
        regions=load_regions(),
        writes=prepared.is_mutation,
        read_primary=read_primary,
    )

    def execute() -> dict[str, Any]:
        with record_statements() as statements:
            body = execute_operation(schema, prepared, request_context, request_id)
            if request_context.committed_writes:
                body = _with_position(body)
        metrics.add_metric("SqlStatements", MetricUnit.Count, len(statements))
        return body

    if not (prepared.is_mutation and key):
        return 200, execute()
    if not _IDEMPOTENCY_KEY.match(key):
        return 400, transport.error_body(
            "Idempotency-Key must be 8 to 128 characters of A-Z a-z 0-9 . _ : -",
            field="Idempotency-Key",
        )
    return _idempotent(
        context, actor.sub or "anonymous", key, request, execute, request_context, request_id
    )


def _min_position(request: transport.GraphQLRequest) -> str | None:
    """The Covenant-Min-Position a read asks for: the header, else `extensions.minPosition`."""
    header = request.headers.get(position.MIN_HEADER.lower())
    if header is not None:
        return position.parse(header)
    return position.parse((request.extensions or {}).get("minPosition"))


def _with_position(body: dict[str, Any]) -> dict[str, Any]:
    """The answer of a mutation that committed, with the primary's position after it (read
    back in the session that committed). Without it the write still stands: the answer then
    carries no position, and a read may not see the write until the replica catches up."""
    try:
        with writer().session() as session:
            after = position.after_commit(session)
    except (DatabaseUnavailable, DatabaseError):
        logger.warning("position after commit unavailable", exc_info=True)
        return body
    return {**body, "extensions": {**(body.get("extensions") or {}), "position": after}}


def _hand_off(
    event: dict[str, Any], request: transport.GraphQLRequest, request_id: str, reason: str
) -> Relayed:
    """The request, handed whole to the primary region's GraphQL function."""
    try:
        return Relayed(handoff.hand_off(event, reason))
    except HopFailed as failure:
        logger.warning("%s", failure)
        return Relayed(_hop_failed(failure, request, request_id, writes=reason == "mutation"))


def _hop_failed(
    failure: HopFailed, request: transport.GraphQLRequest, request_id: str, *, writes: bool
) -> dict[str, Any]:
    if failure.kind == "throttled":
        message = (
            "The primary region is busy: nothing was applied. Retry in "
            f"{failure.retry_after_s} s. Request id: {request_id}"
        )
    elif failure.status == 413:
        message = "The request is too large to hand to the primary region: nothing was applied."
    elif failure.may_have_applied and writes:
        message = (
            "The primary region did not answer: this change may have been applied. Send it "
            "again with the same Idempotency-Key to find out (a retry with the key gets the "
            "first attempt's answer and never applies it twice); without a key, read the data "
            f"before sending it anew. Request id: {request_id}"
        )
    elif failure.may_have_applied:
        message = f"The primary region did not answer; retry shortly. Request id: {request_id}"
    else:
        message = (
            "The primary region cannot be reached: nothing was applied. Retry shortly. "
            f"Request id: {request_id}"
        )
    code = "PAYLOAD_TOO_LARGE" if failure.status == 413 else "SERVICE_UNAVAILABLE"
    status = failure.status if request.media_type == transport.GRAPHQL_RESPONSE else 200
    headers = {"Retry-After": str(failure.retry_after_s)} if failure.retry_after_s else {}
    body = transport.error_body(
        message,
        code=code,
        mayHaveBeenApplied=failure.may_have_applied and writes,
        requestId=request_id,
    )
    return transport.response(status, body, request.media_type, headers)


def _primary_moved(
    request: transport.GraphQLRequest, request_id: str
) -> tuple[int, dict[str, Any]] | Relayed:
    """A handed-off request reached a region that is no longer primary (a failover changed the
    region table in between): nothing ran; the client's retry finds the new primary."""
    logger.warning("handed-off request reached %s, which is not the primary", settings().region)
    status = 503 if request.media_type == transport.GRAPHQL_RESPONSE else 200
    body = transport.error_body(
        "The primary region is changing: nothing was applied. Retry shortly. "
        f"Request id: {request_id}",
        code="SERVICE_UNAVAILABLE",
        mayHaveBeenApplied=False,
        requestId=request_id,
    )
    return Relayed(transport.response(status, body, request.media_type, {"Retry-After": "2"}))


def _signed_out(actor: Actor) -> bool:
    """Whether the token predates the user's last sign-out everywhere or role change
    (covenant.revocation). Only writes ask: a read needs no token, so a stale one reads what
    anyone may. Asked of the local reader, as the mobile endpoints ask: the writer may be a
    region away, and a sign-out reaches the replica within its lag (about a second)."""
    with reader().session() as session:
        return is_revoked(session, actor)


def _unavailable(request: transport.GraphQLRequest, request_id: str) -> tuple[int, dict[str, Any]]:
    # An answer without `data`: graphql-response+json needs a 4xx or 5xx status for it.
    status = 503 if request.media_type == transport.GRAPHQL_RESPONSE else 200
    return status, transport.error_body(
        f"The database is unavailable; retry shortly. Request id: {request_id}",
        code="INTERNAL_SERVER_ERROR",
        requestId=request_id,
    )


class _NotReplayable(Exception):
    """An internal failure is not a result: the retry must run again, so the record goes."""

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__("internal error")
        self.body = body


def _idempotent(
    context: LambdaContext,
    actor: str,
    key: str,
    request: transport.GraphQLRequest,
    execute: Any,
    request_context: RequestContext,
    request_id: str,
) -> tuple[int, dict[str, Any]]:
    idempotency_config.register_lambda_context(context)

    @idempotent_function(  # type: ignore[untyped-decorator]
        data_keyword_argument="call",
        # Not the Lambda function name (Powertools' default): that differs per region, and a
        # client retrying in another region must find its first attempt.
        key_prefix="covenant-graphql",
        persistence_store=persistence,
        config=idempotency_config,
        output_serializer=idempotency.ANSWERS,  # a replay answers the first answer's bytes
    )
    def run_once(call: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = execute()
        internal = any(
            e["extensions"]["code"] == "INTERNAL_SERVER_ERROR" for e in body.get("errors", [])
        )
        # Once a write has committed, running the request again would repeat it: the answer
        # is kept, internal error and all.
        if internal and not request_context.committed_writes:
            raise _NotReplayable(body)
        return body

    try:
        with idempotency.tracking():
            return 200, run_once(call={"actor": actor, "key": key, "body": request.body()})
    except _NotReplayable as failure:
        return 200, failure.body
    except IdempotencyValidationError:
        return 422, transport.error_body(
            "This Idempotency-Key was used with a different request; use a new key.",
            field="Idempotency-Key",
        )
    except (IdempotencyPersistenceLayerError, IdempotencyInconsistentStateError):
        logger.exception("idempotency store unavailable")
        return _unavailable(request, request_id)
    except IdempotencyAlreadyInProgressError:
        return 409, transport.error_body(
            "A request with this Idempotency-Key is still running; retry in a moment.",
            code="CONFLICT",
            field="Idempotency-Key",
        )
