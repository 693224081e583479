"""GraphQL over HTTP (the GraphQL-over-HTTP specification), independent of what executes.

Turns an API Gateway HTTP API event into a GraphQL request or a precise 4xx answer, and an
execution result into the HTTP response the client negotiated:
`application/graphql-response+json` (request errors are 4xx, execution errors 200) or, for
clients that only accept it, `application/json` (every well-formed request gets 200).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

import orjson

GRAPHQL_RESPONSE = "application/graphql-response+json"
JSON = "application/json"
# The deepest JSON a request may nest (RFC 8259 section 9 lets a parser set a limit). A
# GraphQL request needs a handful of levels; far deeper input would exhaust the stack, in
# the parser or later (the idempotency record hashes the variables): it is malformed input.
MAX_JSON_DEPTH = 64
TOO_DEEP = f"nested more than {MAX_JSON_DEPTH} levels deep"


class JsonTooDeep(ValueError):
    """JSON nested deeper than MAX_JSON_DEPTH (or too deep for the parser at all)."""

    def __init__(self) -> None:
        super().__init__(TOO_DEEP)


def _depth_at_most(value: Any, limit: int) -> bool:
    """Whether `value` nests at most `limit` arrays and objects; iterative, so any depth the
    parser returned is measured without recursion."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        for child in item.values() if isinstance(item, dict) else item:
            if isinstance(child, dict | list):
                stack.append((child, depth + 1))
    return True


def loads(raw: str | bytes) -> Any:
    """json.loads, but JSON nested too deeply raises JsonTooDeep (a ValueError, as other
    malformed JSON) instead of RecursionError."""
    try:
        value = json.loads(raw)
    except RecursionError:
        raise JsonTooDeep from None
    if not _depth_at_most(value, MAX_JSON_DEPTH):
        raise JsonTooDeep
    return value


@dataclass(frozen=True)
class GraphQLRequest:
    query: str
    variables: dict[str, Any] | None
    operation_name: str | None
    method: str
    media_type: str  # negotiated response media type
    headers: dict[str, str] = field(default_factory=dict)
    extensions: dict[str, Any] | None = None  # the request's `extensions` (POST body)

    def body(self) -> dict[str, Any]:
        """The request as the idempotency record compares it."""
        return {
            "query": self.query,
            "variables": self.variables,
            "operationName": self.operation_name,
        }


class TransportError(Exception):
    """The HTTP request is not a GraphQL request we can run: answered with `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        media_type: str = GRAPHQL_RESPONSE,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.media_type = media_type
        self.headers = headers or {}


class ExplorerRequested(Exception):
    """A browser opened the endpoint: answer with the explorer page."""


def negotiate(accept: str | None) -> str:
    """The response media type for an Accept header (absent means application/json)."""
    if not accept:
        return JSON
    ranges = []
    for part in accept.split(","):
        media_range, *parameters = (piece.strip().lower() for piece in part.split(";"))
        if any(p.replace(" ", "") in ("q=0", "q=0.0", "q=0.00", "q=0.000") for p in parameters):
            continue  # q=0: explicitly not acceptable
        ranges.append(media_range)
    if GRAPHQL_RESPONSE in ranges:
        return GRAPHQL_RESPONSE
    # A wildcard gets application/json, as the GraphQL-over-HTTP audit expects: a client
    # that names no GraphQL type may not know graphql-response+json's status codes.
    if JSON in ranges or "application/*" in ranges or "*/*" in ranges:
        return JSON
    raise TransportError(
        406,
        f"Accept must allow {GRAPHQL_RESPONSE} or {JSON}",
        media_type=JSON,
    )


def _object_or_none(value: Any, name: str, media_type: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise TransportError(400, f"'{name}' must be a JSON object", media_type=media_type)
    return value


def _json_parameter(params: dict[str, Any], name: str, media_type: str) -> dict[str, Any] | None:
    """A GET request's `variables` or `extensions`: a JSON-encoded object, as GraphQL over
    HTTP has them in the query string."""
    text = params.get(name)
    if not text:
        return None
    try:
        value = loads(text)
    except JsonTooDeep:
        raise TransportError(
            400, f"'{name}' must be JSON-encoded: {TOO_DEEP}", media_type=media_type
        ) from None
    except ValueError:
        raise TransportError(400, f"'{name}' must be JSON-encoded", media_type=media_type) from None
    return _object_or_none(value, name, media_type)


def _string_or_none(value: Any, name: str, media_type: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise TransportError(400, f"'{name}' must be a string", media_type=media_type)
    return value


def not_utf8(error: UnicodeDecodeError | UnicodeEncodeError) -> str:
    """What makes bytes not UTF-8 (or text not encodable as UTF-8), precisely."""
    if isinstance(error, UnicodeDecodeError):
        byte = error.object[error.start]
        return f"{error.reason}: byte 0x{byte:02X} at offset {error.start}"
    code_point = ord(error.object[error.start])
    return f"an unpaired surrogate U+{code_point:04X} at character {error.start}"


def body_text(event: dict[str, Any], media_type: str) -> str:
    """The request body as text. API Gateway passes a body that is not UTF-8 base64-encoded
    (`isBase64Encoded`); GraphQL over HTTP takes only UTF-8 JSON, so anything else (or
    base64 that does not decode) is a malformed request: 400, whatever the route."""
    raw = event.get("body") or ""
    if not event.get("isBase64Encoded"):
        text = str(raw)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # not from API Gateway, which sends UTF-8 only
            raise TransportError(
                400, f"The body is not UTF-8 text ({not_utf8(exc)})", media_type=media_type
            ) from None
        return text.removeprefix("\ufeff")  # ignored, as RFC 8259 lets a parser do
    try:
        body = base64.b64decode(raw)
    except (binascii.Error, ValueError):
        raise TransportError(400, "The body is not valid base64", media_type=media_type) from None
    try:
        return body.decode("utf-8-sig")  # a leading byte order mark ignored, as above
    except UnicodeDecodeError as exc:
        raise TransportError(
            400, f"The body is not UTF-8 text ({not_utf8(exc)})", media_type=media_type
        ) from None


def body_is_text(event: dict[str, Any]) -> bool:
    """Whether the body, if any, is UTF-8 text (see body_text)."""
    try:
        body_text(event, JSON)
    except TransportError:
        return False
    return True


def parse_event(event: dict[str, Any], *, max_body_bytes: int, explorer: bool) -> GraphQLRequest:
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    method = str(event.get("requestContext", {}).get("http", {}).get("method", "")).upper()
    accept = headers.get("accept")
    try:
        error_media_type = negotiate(accept)
    except TransportError:
        error_media_type = JSON
    text = body_text(event, error_media_type)  # every method: a body that is not text is 400
    if method == "GET" and explorer and accept and "text/html" in accept.lower():
        params = event.get("queryStringParameters") or {}
        if "query" not in params:
            raise ExplorerRequested
    media_type = negotiate(accept)
    if method == "GET":
        params = event.get("queryStringParameters") or {}
        query = params.get("query")
        if not query:
            raise TransportError(
                400, "GET requests need a 'query' parameter", media_type=media_type
            )
        return GraphQLRequest(
            query=query,
            variables=_json_parameter(params, "variables", media_type),
            operation_name=params.get("operationName") or None,
            method=method,
            media_type=media_type,
            headers=headers,
            extensions=_json_parameter(params, "extensions", media_type),
        )
    if method != "POST":
        raise TransportError(
            405,
            f"{method} is not allowed: use POST, or GET for queries",
            media_type=media_type,
            headers={"Allow": "GET, POST"},
        )
    content_type = headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in (JSON, "application/graphql+json"):
        raise TransportError(
            415, "POST bodies must be 'Content-Type: application/json'", media_type=media_type
        )
    if len(text.encode("utf-8")) > max_body_bytes:
        raise TransportError(413, f"The body is over {max_body_bytes} bytes", media_type=media_type)
    try:
        payload = loads(text)
    except ValueError as exc:
        raise TransportError(
            400, f"The body is not valid JSON: {exc}", media_type=media_type
        ) from None
    if not isinstance(payload, dict):
        raise TransportError(400, "The body must be a JSON object", media_type=media_type)
    query = payload.get("query")
    if not isinstance(query, str) or not query.strip():
        raise TransportError(
            400, "The body needs a 'query' string holding a GraphQL document", media_type=media_type
        )
    return GraphQLRequest(
        query=query,
        variables=_object_or_none(payload.get("variables"), "variables", media_type),
        operation_name=_string_or_none(payload.get("operationName"), "operationName", media_type)
        or None,
        method=method,
        media_type=media_type,
        headers=headers,
        extensions=_object_or_none(payload.get("extensions"), "extensions", media_type),
    )


def response(
    status: int,
    body: dict[str, Any],
    media_type: str,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {
            "Content-Type": f"{media_type}; charset=utf-8",
            "Cache-Control": "no-store",
            **(headers or {}),
        },
        "body": dumps(body),
        "isBase64Encoded": False,
    }


def dumps(body: dict[str, Any]) -> str:
    """The answer as compact JSON: orjson's (UTF-8 as it is, a tenth of the stdlib's time on
    a large answer), or the stdlib's for what orjson refuses (a string holding a lone
    surrogate, which an error message may quote from the request, or an integer beyond 64
    bits), which escapes it."""
    try:
        return orjson.dumps(body).decode()
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(body, separators=(",", ":"))


def error_body(message: str, code: str = "BAD_USER_INPUT", **extensions: Any) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code, **extensions}}]}
