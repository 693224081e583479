"""POST /auth/login, /auth/refresh, /auth/register, GET /auth/me, POST /auth/logout through the
deployed handler, against a Cognito user pool served by moto."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from covenant import db
from devstack.jwt_auth import JwtVerifier

from ...handoff_fixture import secondary_environment
from .conftest import gateway_claims, make_event, seeded, token_claims

pytestmark = pytest.mark.usefixtures("clean_auth_failures")

LOGIN_KEYS = {"user", "access_token", "id_token", "refresh_token", "expires_in"}
WRONG = {"code": "UNAUTHENTICATED", "message": "Wrong email or password."}


def _login(mobile, email: str, password: str, **kwargs):
    return mobile("POST", "/auth/login", body={"email": email, "password": password}, **kwargs)


def _new_email() -> str:
    return f"user-{uuid.uuid4().hex[:12]}@example.org"


def test_login_answers_the_session_and_the_user(mobile, cognito) -> None:
    user = seeded("editor")
    reply = _login(mobile, user.email, user.password)
    assert reply.status == 200, reply.body
    assert set(reply.body) == LOGIN_KEYS
    assert reply.headers["Cache-Control"] == "no-store"
    sub = token_claims(reply.body["access_token"])["sub"]
    assert reply.body["user"] == {
        "id": sub,
        "email": user.email,
        "name": user.name,
        "roles": ["editor"],
    }
    assert reply.body["expires_in"] > 0
    verifier = JwtVerifier(
        issuer=cognito.issuer, audience=cognito.client_id, jwks_url=cognito.jwks_url
    )
    for name in ("access_token", "id_token"):
        assert verifier.verify(f"Bearer {reply.body[name]}")["sub"] == sub


def test_email_is_not_case_sensitive(mobile) -> None:
    user = seeded("viewer")
    assert _login(mobile, f"  {user.email.upper()} ", user.password).status == 200


def test_every_credential_failure_gets_the_same_401(mobile, cognito) -> None:
    email = _new_email()
    assert (
        mobile(
            "POST",
            "/auth/register",
            body={"email": email, "password": "Disabled-Later-2026!", "name": "Soon Disabled"},
        ).status
        == 201
    )
    cognito.client().admin_disable_user(UserPoolId=cognito.user_pool_id, Username=email)
    user = seeded("viewer")
    replies = [
        _login(mobile, user.email, "Wrong-Password-2026!", source_ip="198.51.100.1"),
        _login(mobile, "nobody-here@covenant.local", user.password, source_ip="198.51.100.2"),
        _login(mobile, email, "Disabled-Later-2026!", source_ip="198.51.100.3"),
    ]
    assert [(r.status, r.body) for r in replies] == [(401, WRONG)] * 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ("not json", "body"),
        ("[1, 2]", "body"),
        ({"password": "x"}, "email"),
        ({"email": 42, "password": "x"}, "email"),
        ({"email": "not-an-email", "password": "x"}, "email"),
        ({"email": "a@example.org"}, "password"),
        ({"email": "a@example.org", "password": ""}, "password"),
        ({"email": "a@example.org", "password": ["x"]}, "password"),
    ],
)
def test_a_malformed_login_is_400_naming_the_field(mobile, body, field: str) -> None:
    reply = mobile("POST", "/auth/login", body=body)
    assert reply.status == 400
    assert reply.body["code"] == "BAD_USER_INPUT"
    assert reply.body["field"] == field


def _age_failures(seconds: int) -> None:
    """Moves every counted attempt `seconds` into the past: the window slides without a wait."""
    with db.writer().session() as session:
        session.run(
            "UPDATE auth_failures SET attempted_at = attempted_at - make_interval(secs => :s)",
            s=seconds,
        )


def test_repeated_failures_lock_the_account_with_retry_after(mobile) -> None:
    user = seeded("viewer")
    env = {"AUTH_MAX_FAILURES_PER_ACCOUNT": "3", "AUTH_FAILURE_WINDOW_S": "600"}
    for attempt in range(3):
        reply = _login(
            mobile, user.email, "Wrong-Password-2026!", env=env, source_ip=f"192.0.2.{attempt}"
        )
        assert reply.status == 401
    # From any address, even with the right password, until the window has moved on.
    locked = _login(mobile, user.email, user.password, env=env, source_ip="192.0.2.99")
    assert locked.status == 429
    assert locked.body["code"] == "TOO_MANY_REQUESTS"
    retry_after = int(locked.headers["Retry-After"])
    assert 1 <= retry_after <= 600
    assert locked.body["retryAfter"] == retry_after
    # Refused attempts do not extend the lock-out: once the first failure has left the
    # window, one more attempt is allowed.
    assert _login(mobile, user.email, user.password, env=env).status == 429
    _age_failures(retry_after)
    assert _login(mobile, user.email, user.password, env=env).status == 200
    # Success clears the account's failures: three more mistakes are allowed again.
    for _ in range(3):
        assert _login(mobile, user.email, "Wrong-Password-2026!", env=env).status == 401


def test_repeated_failures_lock_the_source_address(mobile) -> None:
    env = {"AUTH_MAX_FAILURES_PER_ADDRESS": "3"}
    for _ in range(3):
        reply = _login(mobile, _new_email(), "Whatever-2026!x", env=env, source_ip="192.0.2.50")
        assert reply.status == 401
    blocked = _login(mobile, _new_email(), "Whatever-2026!x", env=env, source_ip="192.0.2.50")
    assert blocked.status == 429 and int(blocked.headers["Retry-After"]) >= 1
    user = seeded("viewer")
    assert _login(mobile, user.email, user.password, env=env, source_ip="192.0.2.50").status == 429
    assert _login(mobile, user.email, user.password, env=env, source_ip="192.0.2.51").status == 200


def test_concurrent_attempts_cannot_overrun_the_limit(mobile) -> None:
    user = seeded("editor")
    env = {"AUTH_MAX_FAILURES_PER_ACCOUNT": "3"}
    statuses: list[int] = []
    lock = threading.Lock()

    def attempt(index: int) -> None:
        reply = _login(
            mobile, user.email, "Wrong-Password-2026!", env=env, source_ip=f"192.0.2.{100 + index}"
        )
        with lock:
            statuses.append(reply.status)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    db.close_all()
    assert sorted(statuses) == [401] * 3 + [429] * 5


def test_refresh_answers_new_tokens_without_a_refresh_token(mobile) -> None:
    user = seeded("editor")
    session = _login(mobile, user.email, user.password).body
    reply = mobile("POST", "/auth/refresh", body={"refresh_token": session["refresh_token"]})
    assert reply.status == 200, reply.body
    assert set(reply.body) == {"user", "access_token", "id_token", "expires_in"}
    assert reply.body["user"] == session["user"]
    assert reply.body["access_token"] != session["access_token"]
    assert token_claims(reply.body["access_token"])["sub"] == session["user"]["id"]


def test_refresh_refuses_a_bad_token_and_a_malformed_body(mobile) -> None:
    reply = mobile("POST", "/auth/refresh", body={"refresh_token": str(uuid.uuid4())})
    assert reply.status == 401 and reply.body["code"] == "UNAUTHENTICATED"
    reply = mobile("POST", "/auth/refresh", body={"token": "x"})
    assert reply.status == 400 and reply.body["field"] == "refresh_token"


def test_register_makes_a_viewer_whatever_role_is_asked(mobile, cognito) -> None:
    email = _new_email()
    reply = mobile(
        "POST",
        "/auth/register",
        body={
            "email": email,
            "password": "Fresh-Account-2026!",
            "name": "  Grace Hopper ",
            "country_code": "ken",
            "role": "admin",
            "roles": ["admin", "editor"],
            "groups": ["admin"],
            "cognito:groups": ["admin"],
            "custom:role": "admin",
        },
    )
    assert reply.status == 201, reply.body
    assert set(reply.body) == LOGIN_KEYS
    assert reply.body["user"]["roles"] == ["viewer"]
    assert reply.body["user"]["name"] == "Grace Hopper"
    assert token_claims(reply.body["access_token"])["cognito:groups"] == ["viewer"]
    groups = cognito.client().admin_list_groups_for_user(
        UserPoolId=cognito.user_pool_id, Username=email
    )["Groups"]
    assert [g["GroupName"] for g in groups] == ["viewer"]
    me = mobile("GET", "/auth/me", claims=gateway_claims(reply.body["access_token"]))
    assert me.status == 200
    assert me.body == {
        "id": reply.body["user"]["id"],
        "email": email,
        "name": "Grace Hopper",
        "country_code": "KEN",
        "roles": ["viewer"],
    }
    assert _login(mobile, email, "Fresh-Account-2026!").status == 200


def test_successful_registrations_are_throttled_per_address(mobile) -> None:
    """A sign-up flood from one address: every registration counts, not only failed ones."""
    env = {"AUTH_MAX_REGISTRATIONS_PER_ADDRESS": "3", "AUTH_MAX_FAILURES_PER_ADDRESS": "3"}

    def register(address: str) -> Any:
        body = {"email": _new_email(), "password": "Flood-Account-2026!", "name": "Flood"}
        return mobile("POST", "/auth/register", body=body, env=env, source_ip=address)

    assert [register("192.0.2.60").status for _ in range(3)] == [201] * 3
    refused = register("192.0.2.60")
    assert refused.status == 429, refused.body
    assert refused.body["code"] == "TOO_MANY_REQUESTS"
    assert refused.body["message"].startswith("Too many accounts registered from this address.")
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 900 and refused.body["retryAfter"] == retry_after
    # Another address registers; the flooding address still signs in (registrations are not
    # sign-in failures).
    assert register("192.0.2.61").status == 201
    user = seeded("viewer")
    assert _login(mobile, user.email, user.password, env=env, source_ip="192.0.2.60").status == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/auth/login", {"email": "ada@example.org", "password": "Whatever-2026!x"}),
        (
            "/auth/register",
            {"email": "ada@example.org", "password": "Whatever-2026!x", "name": "A"},
        ),
        ("/auth/refresh", {"refresh_token": "x"}),
    ],
)
def test_without_a_user_pool_the_auth_routes_answer_503(mobile, path: str, body) -> None:
    """COVENANT_COGNITO=off starts the functions without a pool: a clean 503, no traceback."""
    off = {"COGNITO_USER_POOL_ID": "", "COGNITO_CLIENT_ID": ""}
    reply = mobile("POST", path, body=body, env=off)
    assert reply.status == 503, reply.body
    assert reply.body["code"] == "SERVICE_UNAVAILABLE"
    assert reply.body["message"] == (
        "Sign-in is not available here: this deployment has no Cognito user pool."
    )
    assert reply.headers["Retry-After"] == "60"


def test_register_an_existing_email_is_a_conflict(mobile) -> None:
    reply = mobile(
        "POST",
        "/auth/register",
        body={"email": seeded("admin").email, "password": "Another-Pass-2026!", "name": "X"},
    )
    assert reply.status == 409 and reply.body["code"] == "CONFLICT"


@pytest.mark.parametrize(
    ("password", "missing"),
    [
        ("Short-1!", "at least 12 characters"),
        ("all-lower-case-2026!", "an upper-case letter"),
        ("No-Digits-At-All!", "a number"),
        ("NoSymbolsHere2026", "a symbol"),
    ],
)
def test_a_weak_password_is_400_with_the_policy(
    mobile, cognito, password: str, missing: str
) -> None:
    email = _new_email()
    reply = mobile(
        "POST", "/auth/register", body={"email": email, "password": password, "name": "Weak"}
    )
    assert reply.status == 400
    assert reply.body["field"] == "password"
    assert missing in reply.body["message"]
    assert reply.body["policy"] == {
        "minimumLength": 12,
        "requireUppercase": True,
        "requireLowercase": True,
        "requireNumbers": True,
        "requireSymbols": True,
    }
    client = cognito.client()
    with pytest.raises(client.exceptions.UserNotFoundException):
        client.admin_get_user(UserPoolId=cognito.user_pool_id, Username=email)


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"name": ""}, "name"),
        ({"name": None}, "name"),
        ({"country_code": "KE"}, "country_code"),
        ({"country_code": "ZZZ"}, "country_code"),
        ({"email": "bad"}, "email"),
    ],
)
def test_a_malformed_registration_is_400_naming_the_field(mobile, extra, field: str) -> None:
    body = {"email": _new_email(), "password": "Good-Password-2026!", "name": "Someone", **extra}
    body = {k: v for k, v in body.items() if v is not None}
    reply = mobile("POST", "/auth/register", body=body)
    assert reply.status == 400 and reply.body["field"] == field


def test_me_answers_the_profile_for_access_and_id_tokens(mobile, claims_of) -> None:
    for token in ("AccessToken", "IdToken"):
        reply = mobile("GET", "/auth/me", claims=claims_of("admin", token))
        assert reply.status == 200, reply.body
        assert set(reply.body) == {"id", "email", "name", "country_code", "roles"}
        assert reply.body["email"] == "admin@covenant.local"
        assert reply.body["roles"] == ["admin"]
        assert reply.body["country_code"] is None


def test_logout_signs_out_every_device(mobile, wait_for_replica) -> None:
    email = _new_email()
    password = "Two-Devices-2026!"
    first = mobile(
        "POST", "/auth/register", body={"email": email, "password": password, "name": "Ada"}
    ).body
    second = _login(mobile, email, password).body
    reply = mobile("POST", "/auth/logout", claims=gateway_claims(first["access_token"]))
    assert reply.status == 200 and reply.body == {"signed_out": True}
    wait_for_replica()  # the sign-out is recorded on the primary, checked on the replica
    for session in (first, second):
        refreshed = mobile(
            "POST", "/auth/refresh", body={"refresh_token": session["refresh_token"]}
        )
        assert refreshed.status == 401
        for token in ("access_token", "id_token"):
            me = mobile("GET", "/auth/me", claims=gateway_claims(session[token]))
            assert me.status == 401, token
            sync = mobile("GET", "/sync", claims=gateway_claims(session[token]))
            assert sync.status == 401
    again = _login(mobile, email, password).body
    assert mobile("GET", "/auth/me", claims=gateway_claims(again["access_token"])).status == 200
    # Signing out with an ID token works too.
    assert mobile("POST", "/auth/logout", claims=gateway_claims(again["id_token"])).status == 200
    wait_for_replica()
    assert mobile("GET", "/auth/me", claims=gateway_claims(again["access_token"])).status == 401


def test_sign_out_in_the_second_of_a_sign_in_ends_it_and_signing_in_again_works(
    mobile, wait_for_replica
) -> None:
    """`iat` has whole seconds: a token issued in the second of the sign-out is refused, and
    the sign-out answers only once that second has passed, so the next sign-in works."""
    email, password = _new_email(), "Same-Second-2026!"
    mobile("POST", "/auth/register", body={"email": email, "password": password, "name": "Ada"})
    while time.time() % 1 > 0.3:  # sign in and out within one second
        time.sleep(0.05)
    session = _login(mobile, email, password).body
    started = time.time()
    assert (
        mobile("POST", "/auth/logout", claims=gateway_claims(session["access_token"])).status == 200
    )
    assert int(started) == int(token_claims(session["access_token"])["iat"])
    wait_for_replica()
    assert mobile("GET", "/auth/me", claims=gateway_claims(session["access_token"])).status == 401
    again = _login(mobile, email, password).body
    wait_for_replica()
    assert mobile("GET", "/auth/me", claims=gateway_claims(again["access_token"])).status == 200


def test_tokens_and_passwords_never_reach_the_logs(mobile, capsys, caplog) -> None:
    email, password = _new_email(), "Secret-Enough-2026!"
    body = {"email": email, "password": password, "name": "Quiet"}
    session = mobile("POST", "/auth/register", body=body).body
    _login(mobile, email, "Wrong-Password-2026!")
    mobile("POST", "/auth/refresh", body={"refresh_token": session["refresh_token"]})
    mobile("POST", "/auth/logout", claims=gateway_claims(session["access_token"]))
    output = capsys.readouterr()
    logged = output.out + output.err + caplog.text
    for secret in (
        password,
        "Wrong-Password-2026!",
        session["access_token"],
        session["refresh_token"],
        session["id_token"],
    ):
        assert secret not in logged


# Invokes the mobile handler, in a fresh process, with every event of a JSON file (argv[1]),
# and writes the responses to argv[2]; the process's stdout and stderr are its logs. argv[4]
# is the region: in a secondary, login and refresh are handed to the primary's function (the
# tests' stand-in, in the test process), and the secondary's own logs are checked.
_INVOKE_EACH = """
import json, sys
from covenant.regions import get_region
from devstack.functions import get_function, invoke
events = json.loads(open(sys.argv[1]).read())
endpoints = json.loads(sys.argv[3])
responses = [invoke(get_function("mobile"), get_region(sys.argv[4]), e, endpoints) for e in events]
open(sys.argv[2], "w").write(json.dumps(responses))
"""


@pytest.mark.parametrize("region", ["iad", "ams"])
def test_tokens_stay_out_of_the_logs_with_every_powertools_debug_switch_on(
    endpoints, cognito, primary_lambda, tmp_path: Path, region: str
) -> None:
    """POWERTOOLS_DEV prints each event and POWERTOOLS_LOGGER_LOG_EVENT logs it: both are
    common switches when debugging, and a login event carries the password, a refresh event
    the refresh token, every other one a bearer token."""
    user = seeded("editor")
    session = cognito.login(user.email, user.password)
    events = [
        make_event("POST", "/auth/login", body={"email": user.email, "password": user.password}),
        make_event("POST", "/auth/refresh", body={"refresh_token": session["RefreshToken"]}),
        make_event("GET", "/auth/me", claims=gateway_claims(session["AccessToken"])),
    ]
    for event in events:
        event["requestContext"]["stage"] = region
        event["rawPath"] = event["rawPath"].replace("/ams/", f"/{region}/", 1)
    (tmp_path / "events.json").write_text(json.dumps(events))
    environment = {
        **os.environ,
        "POWERTOOLS_DEV": "true",
        "POWERTOOLS_LOGGER_LOG_EVENT": "true",
        "POWERTOOLS_LOG_LEVEL": "DEBUG",
        "POWERTOOLS_TRACER_CAPTURE_RESPONSE": "true",
        "POWERTOOLS_METRICS_DISABLED": "false",
    }
    hop = {} if region == "iad" else secondary_environment("mobile")
    with primary_lambda.configured(endpoints):
        result = subprocess.run(
            [
                sys.executable,
                "-c",
                _INVOKE_EACH,
                str(tmp_path / "events.json"),
                str(tmp_path / "responses.json"),
                json.dumps({**endpoints, **hop}),
                region,
            ],
            cwd=Path(__file__).resolve().parents[3],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr
    responses = json.loads((tmp_path / "responses.json").read_text())
    assert [r["statusCode"] for r in responses] == [200, 200, 200]
    logged = result.stdout + result.stderr
    assert '"Requests"' in logged  # the function's own output is what was captured
    answered = [json.loads(r["body"]) for r in responses[:2]]
    secrets = {
        "password": user.password,
        "refresh token": session["RefreshToken"],
        "bearer token": session["AccessToken"],
        **{f"{k} answered": a[k] for a in answered for k in ("access_token", "id_token")},
        "refresh token answered": answered[0]["refresh_token"],
    }
    leaked = [name for name, secret in secrets.items() if secret in logged]
    assert leaked == []
