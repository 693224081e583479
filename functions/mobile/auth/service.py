"""The auth routes' work: validate the body, throttle, ask Cognito, shape the answer.

Every credential failure of a sign-in gets the same 401 body, whatever Cognito said (wrong
password, unknown, unconfirmed or disabled account), and counts towards the throttle.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from covenant.config import ConfigError
from covenant.db import reader
from covenant.identity import ROLES, Caller
from covenant.revocation import is_revoked, record_sign_out, wait_out_second
from mobile.auth import cognito
from mobile.auth.throttle import Throttle, account_key
from mobile.http import (
    BadRequest,
    Conflict,
    Forbidden,
    ServiceUnavailable,
    Unauthenticated,
)
from mobile.settings import CognitoSettings, ThrottleSettings

logger = logging.getLogger(__name__)

WRONG_CREDENTIALS = "Wrong email or password."
SESSION_ENDED = "This session has ended (expired, revoked or signed out): sign in again."
_UNAVAILABLE = "Sign-in is unavailable for a moment; try again shortly."
_NOT_CONFIGURED = "Sign-in is not available here: this deployment has no Cognito user pool."
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_ALPHA3 = re.compile(r"^[A-Z]{3}$")


def _string(body: Mapping[str, Any], field: str, *, maximum: int) -> str:
    value = body.get(field)
    if value is None:
        raise BadRequest(f"{field} is required.", field=field)
    if not isinstance(value, str):
        raise BadRequest(f"{field} must be a string.", field=field)
    if not value or len(value) > maximum:
        raise BadRequest(f"{field} must be 1 to {maximum} characters.", field=field)
    return value


def _email(body: Mapping[str, Any]) -> str:
    email = _string(body, "email", maximum=254).strip().lower()
    if not _EMAIL.match(email):
        raise BadRequest("email must be an email address, e.g. ada@example.org.", field="email")
    return email


def _roles(raw: Any) -> list[str]:
    items = raw if isinstance(raw, list) else []
    return sorted(str(item) for item in items if item in ROLES)


def _session_body(tokens: cognito.Tokens) -> dict[str, Any]:
    claims = tokens.id_claims()
    body: dict[str, Any] = {
        "user": {
            "id": claims.get("sub"),
            "email": claims.get("email"),
            "name": claims.get("name"),
            "roles": _roles(claims.get("cognito:groups")),
        },
        "access_token": tokens.access_token,
        "id_token": tokens.id_token,
    }
    if tokens.refresh_token is not None:
        body["refresh_token"] = tokens.refresh_token
    body["expires_in"] = tokens.expires_in
    return body


def _caller_context(body: Mapping[str, Any], source_ip: str) -> cognito.CallerContext:
    """The caller for Cognito's threat protection: the address API Gateway saw, and the
    optional `user_context_data` of the body (the encoded data Cognito's advanced security
    SDK computes on the device)."""
    encoded = body.get("user_context_data")
    if encoded is not None and (
        not isinstance(encoded, str)
        or not encoded
        or len(encoded) > cognito.MAX_ENCODED_CONTEXT_DATA
    ):
        raise BadRequest(
            "user_context_data must be the string of Cognito's advanced security SDK, "
            f"1 to {cognito.MAX_ENCODED_CONTEXT_DATA} characters.",
            field="user_context_data",
        )
    return cognito.CallerContext(source_ip=source_ip, encoded_data=encoded)


def login(body: Mapping[str, Any], source_ip: str) -> dict[str, Any]:
    """{user, access_token, id_token, refresh_token, expires_in} or an ApiError."""
    email = _email(body)
    password = _string(body, "password", maximum=256)
    caller = _caller_context(body, source_ip)
    settings = _cognito()
    attempt = Throttle(ThrottleSettings.load()).begin(account=account_key(email), address=source_ip)
    try:
        tokens = cognito.sign_in(settings, email, password, caller)
    except cognito.CredentialsRejected:
        attempt.failed()
        raise Unauthenticated(WRONG_CREDENTIALS) from None
    except cognito.ChallengeRequired as challenge:
        attempt.abandoned()  # the password was right: not a failure
        raise Forbidden(
            "This account must complete a sign-in step this API does not offer "
            f"({challenge.challenge}); ask an administrator to reset it.",
            challenge=challenge.challenge,
        ) from None
    except cognito.CognitoUnavailable as unavailable:
        attempt.abandoned()
        logger.warning("login: Cognito unavailable (%s)", unavailable)
        raise ServiceUnavailable(_UNAVAILABLE) from None
    except BaseException:
        attempt.abandoned()
        raise
    attempt.succeeded()
    return _session_body(tokens)


def refresh(body: Mapping[str, Any], source_ip: str) -> dict[str, Any]:
    """{user, access_token, id_token, expires_in}: new tokens, the refresh token unchanged."""
    refresh_token = _string(body, "refresh_token", maximum=8192)
    settings = _cognito()
    attempt = Throttle(ThrottleSettings.load()).begin(account=None, address=source_ip)
    try:
        tokens = cognito.refresh(settings, refresh_token)
    except cognito.CredentialsRejected:
        attempt.failed()
        raise Unauthenticated(SESSION_ENDED) from None
    except cognito.CognitoUnavailable as unavailable:
        attempt.abandoned()
        logger.warning("refresh: Cognito unavailable (%s)", unavailable)
        raise ServiceUnavailable(_UNAVAILABLE) from None
    except cognito.ChallengeRequired as challenge:
        attempt.abandoned()
        raise Unauthenticated(SESSION_ENDED, challenge=challenge.challenge) from None
    except BaseException:
        attempt.abandoned()
        raise
    attempt.succeeded()
    return _session_body(
        cognito.Tokens(tokens.access_token, tokens.id_token, None, tokens.expires_in)
    )


def register(body: Mapping[str, Any], source_ip: str) -> dict[str, Any]:
    """A new viewer account, signed in: the login answer. Any role the body asks for is
    ignored; only email, password, name and country_code are read."""
    email = _email(body)
    password = _string(body, "password", maximum=256)
    name = _string(body, "name", maximum=100).strip()
    if not name:
        raise BadRequest("name must not be blank.", field="name")
    country_code = _country_code(body.get("country_code"))
    caller = _caller_context(body, source_ip)
    settings = _cognito()
    policy = _policy(settings)
    missing = cognito.policy_failures(password, policy)
    if missing:
        raise _weak_password(f"The password needs {', '.join(missing)}.", policy)
    attempt = Throttle(ThrottleSettings.load()).begin(
        account=None, address=source_ip, registration=True
    )
    created = False  # an account made counts as a registration whatever follows
    try:
        cognito.create_viewer(settings, email, password, name, country_code)
        created = True
        tokens = cognito.sign_in(settings, email, password, caller)
    except cognito.AccountExists:
        # Counted as a failure, so probing which emails have accounts is throttled.
        attempt.failed()
        raise Conflict(
            "An account with this email already exists: sign in, or reset its password."
        ) from None
    except cognito.WeakPassword as weak:
        attempt.abandoned()
        raise _weak_password(
            str(weak) or "The password does not meet the policy.", policy
        ) from None
    except (cognito.CognitoUnavailable, cognito.CredentialsRejected, cognito.ChallengeRequired):
        attempt.succeeded() if created else attempt.abandoned()
        logger.warning("register: Cognito unavailable or refused the new account's sign-in")
        raise ServiceUnavailable(_UNAVAILABLE) from None
    except BaseException:
        attempt.succeeded() if created else attempt.abandoned()
        raise
    attempt.succeeded()
    return _session_body(tokens)


def me(caller: Caller) -> dict[str, Any]:
    """{id, email, name, country_code, roles} from the user pool (current roles, not the
    token's)."""
    _require_live(caller)
    settings = _cognito()
    try:
        profile = cognito.profile(settings, caller.username)
        if not profile.enabled:
            raise cognito.CredentialsRejected
        groups = cognito.groups(settings, caller.username)
    except cognito.CredentialsRejected:
        raise Unauthenticated(SESSION_ENDED) from None
    except cognito.CognitoUnavailable:
        raise ServiceUnavailable(_UNAVAILABLE) from None
    return {
        "id": profile.sub,
        "email": profile.email,
        "name": profile.name,
        "country_code": profile.country_code,
        "roles": [group for group in groups if group in ROLES],
    }


def logout(caller: Caller, bearer_token: str | None) -> dict[str, Any]:
    """Signs the user out on every device: Cognito revokes the refresh tokens, and every
    access or ID token issued so far is refused by this API from now on."""
    settings = _cognito()
    access_token = bearer_token if caller.sent_access_token else None
    try:
        cognito.sign_out_everywhere(settings, access_token=access_token, username=caller.username)
    except cognito.CognitoUnavailable:
        raise ServiceUnavailable(_UNAVAILABLE) from None
    # Answered once the second of the sign-out has passed: a token issued in it is refused,
    # and a sign-in after this answer must get one from a later second.
    wait_out_second(record_sign_out(caller.sub))
    return {"signed_out": True}


def _cognito() -> CognitoSettings:
    """The user pool's settings; a function started without one (`COVENANT_COGNITO=off`
    locally, a deployment missing COGNITO_USER_POOL_ID or COGNITO_CLIENT_ID) answers 503."""
    try:
        return CognitoSettings.load()
    except ConfigError as missing:
        logger.warning("auth: no user pool configured (%s)", missing)
        raise ServiceUnavailable(_NOT_CONFIGURED, retry_after_s=60) from None


def _require_live(caller: Caller) -> None:
    with reader().session() as session:
        if is_revoked(session, caller):
            raise Unauthenticated(SESSION_ENDED)


def _country_code(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _ALPHA3.match(value.strip().upper()):
        raise BadRequest(
            "country_code must be an ISO 3166 alpha-3 code, e.g. KEN.", field="country_code"
        )
    code = value.strip().upper()
    with reader().session() as session:
        if (
            session.scalar("SELECT 1 FROM countries WHERE code = CAST(:c AS bpchar)", c=code)
            is None
        ):
            raise BadRequest(f"country_code: no country has the code {code}.", field="country_code")
    return code


def _policy(settings: CognitoSettings) -> dict[str, Any]:
    try:
        return cognito.password_policy(settings)
    except cognito.CognitoUnavailable:
        raise ServiceUnavailable(_UNAVAILABLE) from None


def _weak_password(message: str, policy: Mapping[str, Any]) -> BadRequest:
    described = cognito.describe_policy(policy)
    needs = [f"at least {described['minimumLength']} characters"] + [
        label
        for flag, label in (
            ("requireUppercase", "an upper-case letter"),
            ("requireLowercase", "a lower-case letter"),
            ("requireNumbers", "a number"),
            ("requireSymbols", "a symbol"),
        )
        if described[flag]
    ]
    return BadRequest(
        f"{message} The password policy: {', '.join(needs)}.",
        field="password",
        rule="password_policy",
        policy=described,
    )
