"""covenant.tokens: a refusal's message is logged (the GraphQL function's "token refused: %s",
the local gateway's 401 line), so it never holds the Authorization header or any part of the
token, whatever shape the header has."""

from __future__ import annotations

import base64
import json
import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from covenant.tokens import JwtVerifier, Unauthorized, token_from
from covenant.topology import FunctionSpec, Route
from devstack.gateway import Gateway
from devstack.processes import free_port
from devstack.runtime import FunctionConfig

ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Messages1"
CLIENT_ID = "messagesclient"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _segment(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _secret_token() -> str:
    """A token whose every segment is distinctive, so a leak of any part of it shows."""
    return jwt.encode(
        {
            "sub": "leak-probe",
            "iss": ISSUER,
            "client_id": CLIENT_ID,
            "token_use": "access",
            "exp": 4_102_444_800,
            "marker": "do-not-log-me",
        },
        KEY,
        algorithm="RS256",
        headers={"kid": "key-1"},
    )


TOKEN = _secret_token()
SEGMENTS = TOKEN.split(".")


def _leaks(text: str) -> list[str]:
    return [segment for segment in SEGMENTS if segment and segment in text]


HEADERS = [
    f"{TOKEN} x",
    f"{TOKEN} {TOKEN}",
    f"Basic {TOKEN}",
    f"Token {TOKEN}",
    f"{TOKEN}:{TOKEN} Bearer",
    f"{TOKEN}\t{TOKEN}",
    f"Bearer {TOKEN} trailing",
    f"Bearer {TOKEN}{TOKEN}",
    f"Bearer\u00a0{TOKEN}",
    f"{TOKEN}\u0000 x",
    # a well-formed JWT whose header fields carry the token
    f"Bearer {_segment({'alg': TOKEN, 'kid': 'key-1'})}.{SEGMENTS[1]}.{SEGMENTS[2]}",
    f"Bearer {_segment({'alg': 'RS256', 'kid': TOKEN})}.{SEGMENTS[1]}.{SEGMENTS[2]}",
    f"Bearer {_segment({'alg': 'RS256', 'kid': SEGMENTS[2][:60]})}.{SEGMENTS[1]}.{SEGMENTS[2]}",
    f"Bearer {_segment({'alg': 'RS256', 'kid': 7})}.{SEGMENTS[1]}.{SEGMENTS[2]}",
    # a header segment that is not JSON, or not UTF-8
    f"Bearer {base64.urlsafe_b64encode(TOKEN.encode()).decode().rstrip('=')}.e30.c2ln",
    f"Bearer {base64.urlsafe_b64encode(b'{' + bytes([0xFF]) * 9).decode()}.e30.c2ln",
    # the token's payload under a tampered signature
    f"Bearer {SEGMENTS[0]}.{SEGMENTS[1]}.{SEGMENTS[1]}",
]


@pytest.fixture(scope="module")
def jwks_url() -> Iterator[str]:
    entry = RSAAlgorithm.to_jwk(KEY.public_key(), as_dict=True)
    document = json.dumps({"keys": [entry | {"kid": "key-1", "alg": "RS256", "use": "sig"}]})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = document.encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def verifier(jwks_url: str) -> JwtVerifier:
    return JwtVerifier(issuer=ISSUER, audience=CLIENT_ID, jwks_url=jwks_url)


def test_the_probe_token_itself_verifies(verifier: JwtVerifier) -> None:
    assert verifier.verify(f"Bearer {TOKEN}")["marker"] == "do-not-log-me"


@pytest.mark.parametrize("header", HEADERS)
def test_no_refusal_quotes_the_header(verifier: JwtVerifier, header: str) -> None:
    with pytest.raises(Unauthorized) as refused:
        verifier.verify(header)
    assert _leaks(str(refused.value)) == [], str(refused.value)


def test_a_token_where_the_scheme_belongs_is_refused_without_quoting_it() -> None:
    with pytest.raises(Unauthorized) as refused:
        token_from(f"{TOKEN} x")
    assert str(refused.value) == "the Authorization scheme (its first word) is not Bearer"


def test_short_names_are_still_quoted(verifier: JwtVerifier) -> None:
    unknown_kid = f"{_segment({'alg': 'RS256', 'kid': 'retired-key'})}.{SEGMENTS[1]}.c2ln"
    with pytest.raises(Unauthorized, match="kid 'retired-key' is not in the issuer's key set"):
        verifier.verify(f"Bearer {unknown_kid}")
    hs256 = f"{_segment({'alg': 'HS256', 'kid': 'key-1'})}.{SEGMENTS[1]}.c2ln"
    with pytest.raises(Unauthorized, match="algorithm 'HS256' is not accepted"):
        verifier.verify(f"Bearer {hs256}")
    with pytest.raises(Unauthorized, match="malformed token header: Invalid header string"):
        verifier.verify(f"Bearer {base64.urlsafe_b64encode(b'not json!').decode()}.e30.c2ln")


def test_the_gateway_log_holds_no_token(verifier: JwtVerifier, caplog) -> None:
    never = FunctionSpec("never", "never.handler", "never invoked", (Route("GET", "/p", "jwt"),))
    gateway = Gateway(0, {}, verifier=verifier, functions={"never": FunctionConfig(never)})
    gateway.serve_in_thread()
    try:
        with caplog.at_level(logging.INFO, logger="devstack.gateway"):
            for header in HEADERS:
                if "\u0000" in header or "\u00a0" in header or "\t" in header:
                    continue  # http.client refuses to send these
                request = urllib.request.Request(
                    f"{gateway.url}/ams/p", headers={"Authorization": header}
                )
                with pytest.raises(urllib.error.HTTPError) as answered:
                    urllib.request.urlopen(request, timeout=10)
                assert answered.value.code == 401
    finally:
        gateway.shutdown()
    assert gateway.runtime.invocations("never") == 0
    assert any("401" in record.getMessage() for record in caplog.records)
    assert _leaks(caplog.text) == []
