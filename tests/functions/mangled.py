"""Request bodies mangled at the byte level, shared by the tests that send them to every route
of every function (in-process, and through the local gateway)."""

from __future__ import annotations

import http.client
import json
import random
import urllib.parse
from typing import Any


def _random_bytes(seed: int) -> bytes:
    generator = random.Random(seed)  # fixed seeds: the same bytes on every run
    return generator.randbytes(generator.randint(8, 96))


# Bytes that are not UTF-8: API Gateway passes them base64-encoded (isBase64Encoded), and
# every route answers 400.
NOT_UTF8: dict[str, bytes] = {
    "invalid start byte": b"\xfb",
    "invalid byte in a JSON string": b'{"query": "{ sectors { id } }", "x": "\xff"}',
    "truncated 3-byte sequence at the end": '{"query": "{ sectors { id } }", "x": "€'.encode()[:-1],
    "truncated 2-byte sequence in a string": b'{"email": "caf\xc3", "password": "x"}',
    "overlong encoding of /": b'{"email": "\xc0\xaf", "password": "x"}',
    "a surrogate encoded as UTF-8 (CESU-8)": b'{"email": "\xed\xa0\x80", "password": "x"}',
    "UTF-16 with a byte order mark": '{"query": "{ sectors { id } }"}'.encode("utf-16"),
    "Latin-1": '{"email": "café@example.org", "password": "x"}'.encode("latin-1"),
    **{f"random bytes (seed {seed})": _random_bytes(seed) for seed in range(4)},
}

# UTF-8 text that is no valid request: each route that reads a body answers 400, never 5xx.
MALFORMED_TEXT: dict[str, bytes] = {
    "NUL after the JSON": b'{"query": "{ sectors { id } }"}\x00',
    "NUL inside a JSON string": b'{"query": "{ sectors { id }\x00 }", "email": "a\x00"}',
    "only NULs": b"\x00\x00\x00\x00",
    "a lone high surrogate escaped in JSON": (
        b'{"query": "{ countryByCode(code: \\"\\ud800\\") { code } }", '
        b'"email": "\\ud800@example.org", "password": "x", "refresh_token": "\\ud800"}'
    ),
    "a lone low surrogate as a JSON key": b'{"\\udc00": 1, "query": "{ sectors { id } }\\udc00"}',
}


def assert_not_utf8(raw: bytes) -> None:
    """The corpus entry really is not UTF-8 (a random one could, in principle, be)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return
    raise AssertionError(f"{raw!r} is valid UTF-8")


def send_raw(
    url: str, method: str, raw: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """Sends exactly `raw` as the body; returns the status, headers and JSON body (None when
    there is none). A connection closed without an answer raises, as it should fail a test."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target, body=raw, headers=headers or {})
        response = connection.getresponse()
        payload = response.read()
        answer = dict(response.getheaders())
        return response.status, answer, json.loads(payload) if payload else None
    finally:
        connection.close()
