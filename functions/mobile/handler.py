"""Mobile Lambda entry point: the routes of the regional HTTP API that the app calls.

GET /health, POST /auth/login, /auth/refresh, /auth/register (no token); GET /auth/me,
POST /auth/logout, GET /sync, POST /sync, POST /devices, DELETE /devices/{id}, GET /follows,
PUT /follows (a Cognito token, verified by API Gateway's JWT authorizer). The work lives in
mobile.health, mobile.auth.service, mobile.sync and mobile.push.
"""

from __future__ import annotations

import base64
import logging
import re
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from aws_lambda_powertools.utilities.typing import LambdaContext
from pg8000.exceptions import DatabaseError

from covenant import handoff, position
from covenant.config import settings
from covenant.db import (
    CommitOutcomeUnknown,
    DatabaseUnavailable,
    gave_up,
    reader,
    sqlstate,
    writer,
)
from covenant.handoff import PrimaryRequired
from covenant.identity import Caller, caller_from_event
from covenant.logs import adopt_shared_logs
from covenant.regions import region_codes
from covenant.revocation import is_revoked
from mobile import hop
from mobile import push as push_notifications
from mobile.auth import service as auth
from mobile.health import check_health
from mobile.http import (
    ApiError,
    BadRequest,
    Forbidden,
    NotAcceptable,
    ServiceUnavailable,
    Unauthenticated,
    error_response,
    gzip_accepted,
    gzip_bytes,
    json_response,
    parse_json_object,
    request_body,
)
from mobile.settings import SyncSettings
from mobile.sync.changes import parse_changes
from mobile.sync.params import cursor, pull_params
from mobile.sync.pull import pull
from mobile.sync.push import PushRequest, push

logger = Logger(service="mobile")
tracer = Tracer(service="mobile")
metrics = Metrics(namespace="Covenant", service="mobile")
_log = logging.getLogger(__name__)
# Each regional HTTP API serves its stage under /<region>; a custom domain mapping strips it.
# Requests carry passwords and tokens, answers carry tokens: Powertools' debug mode (which
# prints every event) is off whatever POWERTOOLS_DEV says.
app = APIGatewayHttpResolver(
    strip_prefixes=[re.compile(rf"^/({'|'.join(region_codes())})")], debug=False
)

_GZIP_MIN_BYTES = 1024


def _text_body(resolver: APIGatewayHttpResolver, next_middleware: NextMiddleware) -> Response[Any]:
    """Every route refuses a body that is not UTF-8 text with 400 (mobile.http.request_body),
    before it runs, whether or not it reads a body: never a 500 from decoding it later."""
    request_body(resolver.current_event.raw_event)
    return next_middleware(resolver)


app.use(middlewares=[_text_body])


@app.get("/health")
def health() -> Response[Any]:
    report = check_health(app.current_event.raw_event)
    return json_response(report.http_status, report.body())


@app.post("/auth/login")
def login() -> Response[Any]:
    return json_response(200, auth.login(_body(), _source_ip()))


@app.post("/auth/refresh")
def refresh() -> Response[Any]:
    return json_response(200, auth.refresh(_body(), _source_ip()))


@app.post("/auth/register")
def register() -> Response[Any]:
    return json_response(201, auth.register(_body(), _source_ip()))


@app.get("/auth/me")
def me() -> Response[Any]:
    return json_response(200, auth.me(_caller()))


@app.post("/auth/logout")
def logout() -> Response[Any]:
    return json_response(200, auth.logout(_caller(), _bearer_token()))


@app.get("/sync")
def sync_pull() -> Response[Any]:
    _live(_caller())
    params = pull_params(app.current_event.query_string_parameters)
    if _needs_primary(_min_position()):
        with writer().session() as primary:
            result = pull(params, primary)
    else:
        result = pull(params)
    metrics.add_metric(f"SyncPull{result.kind.title()}", MetricUnit.Count, 1)
    return _maybe_gzipped(result.body)


@app.post("/sync")
def sync_push() -> Response[Any]:
    caller = _live(_caller())
    if not caller.has_role("editor", "admin"):
        raise Forbidden(
            "Pushing changes needs the role editor or admin.", roles=["editor", "admin"]
        )
    config = SyncSettings.load()
    raw = parse_json_object(
        request_body(app.current_event.raw_event), max_bytes=config.max_push_bytes
    )
    result = push(
        PushRequest(
            caller=caller,
            # where the device asked (a push handed off by a secondary names that region)
            region=handoff.handed_off_from(app.current_event.raw_event) or settings().region,
            request_id=_request_id(),
            last_pulled_at=cursor(
                (app.current_event.query_string_parameters or {}).get("last_pulled_at"),
                required=True,
            ),
            raw_changes=raw,
            changes=parse_changes(raw, max_records=config.max_push_records),
        )
    )
    headers = {"Idempotent-Replayed": "true"} if result.replayed else {}
    written_at = _position_after()
    if written_at is not None:
        headers[position.HEADER] = written_at
    # The position travels in a header only: a replay's body is the first answer's, byte for
    # byte, while its position (taken when it is replayed) may be later.
    return json_response(200, result.body, headers)


@app.post("/devices")
def register_device() -> Response[Any]:
    return json_response(201, push_notifications.register_device(_live(_caller()), _body()))


@app.delete("/devices/<device_id>")
def remove_device(device_id: str) -> Response[Any]:
    return json_response(200, push_notifications.remove_device(_live(_caller()), device_id))


@app.get("/follows")
def follows() -> Response[Any]:
    return json_response(200, push_notifications.follows(_live(_caller())))


@app.put("/follows")
def replace_follows() -> Response[Any]:
    return json_response(200, push_notifications.replace_follows(_live(_caller()), _body()))


@app.exception_handler(ApiError)  # type: ignore[untyped-decorator]
def api_error(error: ApiError) -> Response[Any]:
    metrics.add_metric(f"Errors{error.status}", MetricUnit.Count, 1)
    return error_response(error)


@app.exception_handler(PrimaryRequired)  # type: ignore[untyped-decorator]
def primary_required(_: PrimaryRequired) -> Response[Any]:
    """A read this region's replica cannot serve: the primary region's function answers it."""
    metrics.add_metric("HandedOffReads", MetricUnit.Count, 1)
    return _as_response(hop.relay(app.current_event.raw_event, "read"))


@app.exception_handler(position.BadPosition)  # type: ignore[untyped-decorator]
def bad_position(error: position.BadPosition) -> Response[Any]:
    return error_response(BadRequest(str(error), field=position.MIN_HEADER))


@app.exception_handler(CommitOutcomeUnknown)  # type: ignore[untyped-decorator]
def commit_outcome_unknown(error: CommitOutcomeUnknown) -> Response[Any]:
    _log.warning("commit outcome unknown: %s", error)
    return error_response(
        ServiceUnavailable(
            "The database connection was lost while the push was being saved; it may have been "
            "applied. Sending the same push again is safe: an applied push is answered from its "
            "receipt.",
            mayHaveBeenApplied=True,
            requestId=_request_id(),
        )
    )


@app.exception_handler(DatabaseUnavailable)  # type: ignore[untyped-decorator]
def database_unavailable(error: DatabaseUnavailable) -> Response[Any]:
    _log.warning("database unavailable: %s", error)
    return error_response(
        ServiceUnavailable("The database is unavailable; retry shortly.", requestId=_request_id())
    )


@app.exception_handler(DatabaseError)  # type: ignore[untyped-decorator]
def database_gave_up(error: DatabaseError) -> Response[Any]:
    why = gave_up(error)
    if why is None:
        return _internal_error()
    _log.warning("database gave up: %s", error)
    timeout = sqlstate(error) == "57014"
    metrics.add_metric("DatabaseTimeouts" if timeout else "DatabaseAborts", MetricUnit.Count, 1)
    return error_response(
        ServiceUnavailable(
            f"The database {why}, so nothing was changed; send the request again in a few seconds.",
            reason="statement_timeout" if timeout else "transaction_aborted",
            requestId=_request_id(),
        )
    )


@app.exception_handler(Exception)  # type: ignore[untyped-decorator]
def internal_error(_: Exception) -> Response[Any]:
    return _internal_error()


def _internal_error() -> Response[Any]:
    _log.exception("unhandled error")
    metrics.add_metric("Errors500", MetricUnit.Count, 1)
    return error_response(
        ApiError(f"Internal error. Request id: {_request_id()}", requestId=_request_id())
    )


@app.not_found
def not_found(_: Exception) -> Response[Any]:
    return json_response(404, {"code": "NOT_FOUND", "message": "No such route."})


# The event and the answer never reach a log or a trace, whatever the POWERTOOLS_* variables say.
@logger.inject_lambda_context(
    correlation_id_path=correlation_paths.API_GATEWAY_HTTP, log_event=False
)
@tracer.capture_lambda_handler(capture_response=False)
# Powertools prints its ColdStart metric even with metrics disabled (make dev): ask only when on.
@metrics.log_metrics(capture_cold_start_metric=not is_metrics_disabled())
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    adopt_shared_logs(logger)
    metrics.add_metric("Requests", MetricUnit.Count, 1)
    handed_off = hop.dispatch_first(event)
    if handed_off is not None:
        return handed_off
    return app.resolve(event, context)


# ----------------------------------------------------------------------------------------------


def _body() -> dict[str, Any]:
    return parse_json_object(request_body(app.current_event.raw_event), max_bytes=64 * 1024)


def _request_context() -> dict[str, Any]:
    context: dict[str, Any] = app.current_event.raw_event.get("requestContext") or {}
    return context


def _source_ip() -> str:
    # API Gateway's view of the TCP peer; X-Forwarded-For is the client's to write, so unused.
    return str((_request_context().get("http") or {}).get("sourceIp") or "unknown")


def _request_id() -> str:
    return str(_request_context().get("requestId") or "unknown")


def _caller() -> Caller:
    caller = caller_from_event(app.current_event.raw_event)
    if caller is None:  # API Gateway lets no token-less request reach these routes
        raise Unauthenticated("Sign in: send your access token as 'Authorization: Bearer <token>'.")
    return caller


def _live(caller: Caller) -> Caller:
    with reader().session() as session:
        if is_revoked(session, caller):
            raise Unauthenticated(auth.SESSION_ENDED)
    return caller


def _min_position() -> str | None:
    return position.parse(app.current_event.headers.get(position.MIN_HEADER.lower()))


def _needs_primary(min_position: str | None) -> bool:
    """Whether a read that sent `min_position` must read the primary's database: in the
    primary region when its replica did not reach it in time; a request handed off by a
    secondary (which waited already) at once. A secondary hands it off (PrimaryRequired)."""
    if min_position is None:
        return False
    if handoff.handed_off_from(app.current_event.raw_event) is None:
        if position.replica_has(min_position):
            return False
        if not handoff.is_primary():
            raise PrimaryRequired
    return True


def _position_after() -> str | None:
    """The primary's position after the push (committed, or replayed from its receipt). The
    push stands whatever happens here: a writer that cannot be reached now (connecting is part
    of the try) leaves the answer without a position, never a 503 for a committed push."""
    try:
        with writer().session() as session:
            return position.after_commit(session)
    except Exception:
        _log.warning("position after the push unavailable", exc_info=True)
        return None


def _as_response(proxy: dict[str, Any]) -> Response[Any]:
    """A proxy response (the primary's answer) as the resolver's Response."""
    headers = {str(k): str(v) for k, v in (proxy.get("headers") or {}).items()}
    content_type = headers.pop("Content-Type", None) or headers.pop("content-type", None)
    response: Response[Any] = Response(
        status_code=int(proxy["statusCode"]),
        content_type=content_type,
        body=str(proxy.get("body") or ""),
        headers=headers,
    )
    response.base64_encoded = bool(proxy.get("isBase64Encoded"))
    return response


def _bearer_token() -> str | None:
    raw = str(app.current_event.headers.get("authorization") or "").strip()
    scheme, _, rest = raw.partition(" ")
    return rest.strip() if rest and scheme.lower() == "bearer" else (raw or None)


def _maybe_gzipped(body: str) -> Response[Any]:
    payload = body.encode("utf-8")
    headers = {"Vary": "Accept-Encoding"}
    if len(payload) >= _GZIP_MIN_BYTES and gzip_accepted(app.current_event.headers):
        # Base64 text, flagged as such: a bytes body with a JSON content type would be
        # serialised again by the resolver.
        response = json_response(
            200,
            base64.b64encode(gzip_bytes(payload)).decode("ascii"),
            {"Content-Encoding": "gzip", **headers},
        )
        response.base64_encoded = True
        return response
    if len(payload) > SyncSettings.load().max_response_bytes:
        raise NotAcceptable(
            "This answer is too large to send uncompressed: send 'Accept-Encoding: gzip'."
        )
    return json_response(200, body, headers)
