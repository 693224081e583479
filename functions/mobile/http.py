"""HTTP plumbing of the mobile function: the errors a client can see (one class per failure
class, each with its status and `code`), JSON bodies in and out, gzip."""

from __future__ import annotations

import base64
import binascii
import json
import re
import zlib
from collections.abc import Mapping
from typing import Any, NoReturn

from aws_lambda_powertools.event_handler import Response, content_types

NO_STORE = {"Cache-Control": "no-store"}
# The deepest JSON a body may nest (RFC 8259 section 9 lets a parser set a limit): a push is
# four levels deep, a sign-in one. Far deeper input would exhaust the stack, in the parser or
# later (a push's receipt hashes the whole body): it is refused as malformed.
MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


class ApiError(Exception):
    """A failure the client is told about: `{"code": ..., "message": ..., **details}`."""

    status = 500
    code = "INTERNAL_SERVER_ERROR"

    def __init__(
        self, message: str, *, headers: Mapping[str, str] | None = None, **details: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.details = details

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.details}


class BadRequest(ApiError):
    """Malformed or invalid input; `field` names what was wrong."""

    status = 400
    code = "BAD_USER_INPUT"


class Unauthenticated(ApiError):
    status = 401
    code = "UNAUTHENTICATED"


class Forbidden(ApiError):
    status = 403
    code = "FORBIDDEN"


class NotFound(ApiError):
    status = 404
    code = "NOT_FOUND"


class NotAcceptable(ApiError):
    status = 406
    code = "NOT_ACCEPTABLE"


class Conflict(ApiError):
    status = 409
    code = "CONFLICT"


class PayloadTooLarge(ApiError):
    status = 413
    code = "PAYLOAD_TOO_LARGE"


class TooManyRequests(ApiError):
    status = 429
    code = "TOO_MANY_REQUESTS"

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(
            message, headers={"Retry-After": str(retry_after_s)}, retryAfter=retry_after_s
        )


class ServiceUnavailable(ApiError):
    status = 503
    code = "SERVICE_UNAVAILABLE"

    def __init__(self, message: str, retry_after_s: int = 5, **details: Any) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)}, **details)


def json_response(
    status: int, body: Any, headers: Mapping[str, str] | None = None
) -> Response[Any]:
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=body if isinstance(body, str | bytes) else json.dumps(body, separators=(",", ":")),
        headers={**NO_STORE, **(headers or {})},
    )


def error_response(error: ApiError) -> Response[Any]:
    return json_response(error.status, error.body(), error.headers)


def request_body(event: Mapping[str, Any]) -> str | None:
    """The body of an API Gateway event as text (None without one), or BadRequest. API
    Gateway passes a body that is not UTF-8 base64-encoded (`isBase64Encoded`); every route
    takes JSON, which is UTF-8 text, so such a body is malformed whether or not the route
    reads it, and so is base64 that does not decode."""
    raw = event.get("body")
    if raw is None:
        return None
    if not event.get("isBase64Encoded"):
        text = str(raw)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:  # not from API Gateway, which sends UTF-8 only
            where = f"U+{ord(text[exc.start]):04X} at character {exc.start}"
            raise _not_utf8(f"an unpaired surrogate {where}") from None
        return text
    try:
        body = base64.b64decode(str(raw), validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(
            "The request body is flagged base64 but is not valid base64.", field="body"
        ) from None
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(
            f"{exc.reason}: byte 0x{body[exc.start]:02X} at offset {exc.start}"
        ) from None


def _not_utf8(what: str) -> BadRequest:
    return BadRequest(
        f"The request body is not UTF-8 text ({what}).", field="body", rule="must be UTF-8 text"
    )


def parse_json_object(raw: str | None, *, max_bytes: int | None = None) -> dict[str, Any]:
    """The request body as a JSON object, or BadRequest / PayloadTooLarge. The Content-Type is
    not required: React Native's fetch sends a string body as text/plain."""
    if raw is None or not raw.strip():
        raise BadRequest("The request body must be a JSON object.", field="body")
    if max_bytes is not None and len(raw.encode("utf-8")) > max_bytes:
        raise PayloadTooLarge(
            f"The request body is larger than {max_bytes} bytes; send fewer changes at a time.",
            maxBytes=max_bytes,
        )
    try:
        value = json.loads(raw)
    except RecursionError:
        raise _too_deep() from None
    except ValueError:
        raise BadRequest("The request body is not valid JSON.", field="body") from None
    if not isinstance(value, dict):
        raise BadRequest("The request body must be a JSON object.", field="body")
    _check_json_text(value)
    return value


def _too_deep() -> BadRequest:
    return BadRequest(
        f"The request body is not valid JSON: nested more than {MAX_JSON_DEPTH} levels deep.",
        field="body",
    )


def _check_json_text(body: dict[str, Any]) -> None:
    """Refuses a body nested deeper than MAX_JSON_DEPTH, or holding a string that is not
    Unicode text: JSON may spell an unpaired UTF-16 surrogate ("\\ud800"), which no database
    column, hash or log line can encode (RFC 7493, I-JSON, forbids it). Iterative, so any depth
    the parser returned is walked without recursion; the error names the string's path."""
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _too_deep()
        pairs = item.items() if isinstance(item, dict) else enumerate(item)
        for key, child in pairs:
            if isinstance(key, str) and _SURROGATE.search(key):
                _not_unicode(path or "body", key, "a key")
            if isinstance(key, int):
                where = f"{path}[{key}]"
            else:
                where = f"{path}.{key[:64]}" if path else key[:64]
            if isinstance(child, str) and _SURROGATE.search(child):
                _not_unicode(where, child, "a string")
            if isinstance(child, dict | list):
                stack.append((child, where, depth + 1))


def _not_unicode(where: str, text: str, what: str) -> NoReturn:
    found = _SURROGATE.search(text)
    assert found is not None
    raise BadRequest(
        f"{where} holds {what} that is not valid Unicode text (an unpaired surrogate "
        f"U+{ord(found.group()):04X} at character {found.start() + 1}).",
        field=where,
        rule="must be valid Unicode text",
    )


def gzip_accepted(headers: Mapping[str, str]) -> bool:
    """Whether Accept-Encoding allows gzip (q=0 refuses it)."""
    raw = next((v for k, v in headers.items() if k.lower() == "accept-encoding"), "")
    for part in str(raw).split(","):
        coding, _, params = part.strip().partition(";")
        if coding.strip().lower() not in ("gzip", "*"):
            continue
        quality = params.strip().lower()
        if quality.startswith("q="):
            try:
                return float(quality[2:]) > 0
            except ValueError:
                return False
        return True
    return False


def gzip_bytes(payload: bytes, level: int = 6) -> bytes:
    """gzip at a middle level: JSON shrinks about as much as at 9, in a fraction of the time."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return compressor.compress(payload) + compressor.flush()
