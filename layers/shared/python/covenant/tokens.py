"""Verifying Cognito JWTs exactly as API Gateway's HTTP API JWT authorizer does.

Used by the local gateway (devstack) for every route with an authorizer, and by the GraphQL
function in AWS, whose route has no authorizer (reads are public) so it verifies a token itself
when one is sent (`verifier_from_env()`).

`JwtVerifier.verify()` accepts or refuses the `Authorization` header of a request the way the
authorizer does (https://docs.aws.amazon.com/apigateway/latest/developerguide/http-api-jwt-authorizer.html):

1. The identity source holds the token alone or prefixed with `Bearer ` (API Gateway accepts
   both; any other scheme, e.g. `Basic`, is refused).
2. The header's `alg` must be an RSA algorithm the verifier allows (RS256, Cognito's):
   `none`, HS256 and every other algorithm are refused before any key is looked at.
3. `kid` must name a key of the issuer's key set (JWKS, fetched from `jwks_url` and cached; an
   unknown `kid` refetches it once, at most every `min_refresh_interval_s`), and the signature
   must verify with that key.
4. `iss` must equal the issuer; `exp` must be in the future, `nbf` and `iat` not in the future
   (with `leeway_s` of clock skew).
5. Audience: when the token has `aud` (Cognito ID tokens), it must match the audience (the app
   client id); otherwise `client_id` (Cognito access tokens) must. API Gateway evaluates `aud`
   when both are present.
6. `token_use` must be `access` or `id` (the check Cognito's guidance adds; every token a
   Cognito pool signs carries it, so it refuses nothing API Gateway would accept from Cognito).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
import urllib.request
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any
from urllib.parse import urlsplit

import jwt

from covenant.config import env

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
# Header values a refusal may quote: an algorithm name, a key id. Anything else the client
# wrote (the Authorization header, whatever shape it has) is never quoted: it may hold a
# token, and the message is logged.
_ALGORITHM = re.compile(r"^[A-Za-z0-9]{1,16}$")
_KID = re.compile(r"^[A-Za-z0-9_+/=-]{1,64}$")


class Unauthorized(Exception):
    """The request is refused with 401; the message says why (for logs, never the client).
    It never holds the Authorization header or any part of it."""


def _reason(error: jwt.PyJWTError) -> str:
    """PyJWT's reason ("Invalid header padding", "Signature has expired"), without the
    details some append after a colon (a decoding error's account of the bytes it read)."""
    return str(error).partition(":")[0].strip() or type(error).__name__


def _quoted(value: Any, shape: re.Pattern[str]) -> str:
    """A header value for a log message: quoted when it has the expected shape, else only
    described (what a client writes there is not copied into the logs)."""
    if isinstance(value, str) and shape.match(value):
        return repr(value)
    return f"(a {type(value).__name__} that is not a valid name)"


class JwtVerifier:
    def __init__(
        self,
        *,
        issuer: str,
        audience: str | Sequence[str],
        jwks_url: str,
        algorithms: Sequence[str] = ("RS256",),
        leeway_s: float = 5.0,
        jwks_ttl_s: float = 2 * 3600,  # API Gateway caches the keys for up to two hours
        min_refresh_interval_s: float = 5.0,
        timeout_s: float = 5.0,
    ) -> None:
        if any(not a.startswith(("RS", "PS")) for a in algorithms):
            raise ValueError(f"only RSA algorithms are supported, not {list(algorithms)}")
        self.issuer = issuer
        self.audiences = (audience,) if isinstance(audience, str) else tuple(audience)
        self.jwks_url = jwks_url
        self.algorithms = tuple(algorithms)
        self.leeway_s = leeway_s
        self.jwks_ttl_s = jwks_ttl_s
        self.min_refresh_interval_s = min_refresh_interval_s
        self.timeout_s = timeout_s
        self._keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}  # kid -> key, its `alg`
        self._fetched_at: float | None = None
        self._lock = threading.Lock()

    def verify(self, authorization_header: str | None) -> dict[str, Any]:
        """The verified claims of the request's token, or raises Unauthorized."""
        token = token_from(authorization_header)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"malformed token header: {_reason(exc)}") from None
        algorithm = header.get("alg")
        if algorithm not in self.algorithms:
            raise Unauthorized(f"token algorithm {_quoted(algorithm, _ALGORITHM)} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("token has no kid")
        key, key_algorithm = self._key(kid)
        if key_algorithm not in (None, algorithm):
            raise Unauthorized(
                f"key {_quoted(kid, _KID)} is for {key_algorithm}, the token says {algorithm}"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key.key,
                algorithms=[algorithm],
                issuer=self.issuer,
                leeway=self.leeway_s,
                options={
                    "require": ["iss", "exp"],
                    "verify_aud": False,  # checked below: `aud` or `client_id`
                    "verify_sub": False,
                    "verify_jti": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"token refused: {_reason(exc)}") from None
        for name in ("exp", "iat", "nbf"):
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise Unauthorized(f"{name} must be a number")
        self._check_audience(claims)
        if claims.get("token_use") not in ("access", "id"):
            raise Unauthorized(f"token_use {claims.get('token_use')!r} is not access or id")
        return claims

    def _check_audience(self, claims: Mapping[str, Any]) -> None:
        if "aud" in claims:
            aud = claims["aud"]
            values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
            if not any(value in self.audiences for value in values):
                raise Unauthorized(f"aud {aud!r} is not an accepted audience")
        elif claims.get("client_id") not in self.audiences:
            raise Unauthorized(f"client_id {claims.get('client_id')!r} is not an accepted audience")

    def _key(self, kid: str) -> tuple[jwt.PyJWK, str | None]:
        with self._lock:
            now = time.monotonic()
            expired = self._fetched_at is None or now - self._fetched_at > self.jwks_ttl_s
            may_refresh = (
                self._fetched_at is None or now - self._fetched_at >= self.min_refresh_interval_s
            )
            if expired or (kid not in self._keys and may_refresh):
                self._keys = self._fetch_keys()
                self._fetched_at = time.monotonic()
            key = self._keys.get(kid)
        if key is None:
            raise Unauthorized(f"kid {_quoted(kid, _KID)} is not in the issuer's key set")
        return key

    def _fetch_keys(self) -> dict[str, tuple[jwt.PyJWK, str | None]]:
        host = urlsplit(self.jwks_url).hostname or ""
        # Never send a loopback request (moto) through a proxy from the environment.
        handlers = [urllib.request.ProxyHandler({})] if host in _LOOPBACK else []
        opener = urllib.request.build_opener(*handlers)
        try:
            with opener.open(self.jwks_url, timeout=self.timeout_s) as response:
                document = json.loads(response.read())
        except (OSError, ValueError) as exc:
            logger.warning("cannot fetch the key set %s: %s", self.jwks_url, exc)
            raise Unauthorized(f"cannot fetch the key set {self.jwks_url}: {exc}") from None
        keys: dict[str, tuple[jwt.PyJWK, str | None]] = {}
        for entry in document.get("keys", []) if isinstance(document, dict) else []:
            if not isinstance(entry, dict) or entry.get("kty") != "RSA":
                continue
            if entry.get("use", "sig") != "sig" or not isinstance(entry.get("kid"), str):
                continue
            try:
                declared = entry.get("alg")
                key = jwt.PyJWK(entry, algorithm=declared if isinstance(declared, str) else "RS256")
                keys[entry["kid"]] = (key, declared if isinstance(declared, str) else None)
            except (jwt.PyJWTError, KeyError, ValueError) as exc:
                logger.warning(
                    "skipping unusable key %s of %s: %s", entry["kid"], self.jwks_url, exc
                )
        return keys


def token_from(authorization_header: str | None) -> str:
    """The token of an Authorization header (alone or after `Bearer `). A refusal says what
    is wrong with the header, never what it holds: `<token> x` has the token where the
    scheme should be."""
    if authorization_header is None or not authorization_header.strip():
        raise Unauthorized("no Authorization header")
    value = authorization_header.strip()
    scheme, _, rest = value.partition(" ")
    if rest:
        if scheme.lower() != "bearer":
            raise Unauthorized("the Authorization scheme (its first word) is not Bearer")
        value = rest.strip()
    if not _TOKEN.match(value):
        raise Unauthorized("Authorization does not hold a JWT")
    return value


def issuer_for(region: str, user_pool_id: str) -> str:
    """The `iss` of a Cognito user pool's tokens."""
    return f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"


def verifier_from_env() -> JwtVerifier | None:
    """The verifier of the function's Cognito pool (COGNITO_USER_POOL_ID, COGNITO_CLIENT_ID;
    COGNITO_ENDPOINT_URL serves the key set locally), or None when none is configured. One
    per configuration, so the key set is cached across warm invocations."""
    pool_id = env("COGNITO_USER_POOL_ID")
    client_id = env("COGNITO_CLIENT_ID")
    if not pool_id or not client_id:
        return None
    return _verifier(pool_id, client_id, env("COGNITO_ENDPOINT_URL") or None)


@cache
def _verifier(pool_id: str, client_id: str, endpoint_url: str | None) -> JwtVerifier:
    region = pool_id.partition("_")[0]  # pool ids are "<region>_<id>"
    issuer = issuer_for(region, pool_id)
    jwks_base = f"{endpoint_url.rstrip('/')}/{pool_id}" if endpoint_url else issuer
    return JwtVerifier(
        issuer=issuer, audience=client_id, jwks_url=f"{jwks_base}/.well-known/jwks.json"
    )
