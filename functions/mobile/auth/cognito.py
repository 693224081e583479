"""The Cognito user pool, through boto3 `cognito-idp`: every call the auth routes make, with
Cognito's errors turned into the few outcomes the routes distinguish.

Sign-in uses InitiateAuth with USER_PASSWORD_AUTH on the confidential app client: every call
carries SECRET_HASH (HMAC-SHA256 of username + client id under the client secret) and
UserContextData (the caller's address as API Gateway saw it, plus the app's encoded context
data when it sent some), so Cognito's threat protection scores the caller, not this
function's NAT address; Cognito accepts UserContextData only from a client with a secret and
EnablePropagateAdditionalUserContextData. Refresh uses GetTokensFromRefreshToken, which takes
the client secret itself and so needs no username (REFRESH_TOKEN_AUTH would need the pool's
username of the user, the `sub`, which the refresh request does not carry).

The client secret is in no template, environment variable or log: the function reads it from
Cognito (DescribeUserPoolClient, allowed on this pool only) on the first sign-in of an
execution environment and keeps it in memory. botocore's DEBUG lines print request and
response bodies, so its wire loggers are held at INFO here whatever the function's log level.

Registration, profile reads and sign-out by ID token use the Admin* APIs, which need the
function's IAM role: the pool is created with AllowAdminCreateUserOnly, so no one can sign up
around the rules of POST /auth/register (viewer role only). Nothing here logs a token, a
password or the client secret.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from covenant import aws
from mobile.settings import CognitoSettings

logger = logging.getLogger(__name__)
# botocore logs every request body (endpoint) and response body (parsers) at DEBUG: the client
# secret (DescribeUserPoolClient's answer, GetTokensFromRefreshToken's request), passwords and
# tokens. Lambda's log-level control can put the root logger at DEBUG; these stay at INFO.
WIRE_LOGGERS = ("botocore.endpoint", "botocore.parsers")
for _name in WIRE_LOGGERS:
    logging.getLogger(_name).setLevel(logging.INFO)

# Cognito's answers to a wrong email or password, an unknown, unconfirmed or disabled account:
# all the same to the client (no user enumeration).
_CREDENTIAL_ERRORS = frozenset(
    {
        "NotAuthorizedException",
        "UserNotFoundException",
        "UserNotConfirmedException",
        "PasswordResetRequiredException",
    }
)
_UNAVAILABLE_ERRORS = frozenset(
    {
        "TooManyRequestsException",
        "LimitExceededException",
        "InternalErrorException",
        "ServiceUnavailable",
        "ThrottlingException",
    }
)
# The special characters Cognito's password policy counts as symbols.
POLICY_SYMBOLS = frozenset("^$*.[]{}()?\"!@#%&/\\,><':;|_~`=+- ")


class CredentialsRejected(Exception):
    """Wrong credentials or token, in any of Cognito's ways of saying so."""


class ChallengeRequired(Exception):
    """The password was right, but Cognito asks for more (e.g. NEW_PASSWORD_REQUIRED)."""

    def __init__(self, challenge: str) -> None:
        super().__init__(challenge)
        self.challenge = challenge


class AccountExists(Exception):
    pass


class WeakPassword(Exception):
    """Cognito refused the password (its message says why)."""


class CognitoUnavailable(Exception):
    """Cognito could not be reached or throttled us: retry later."""


@dataclass(frozen=True)
class Tokens:
    access_token: str
    id_token: str
    refresh_token: str | None
    expires_in: int

    def id_claims(self) -> dict[str, Any]:
        """The claims of the ID token. Not verified here: it comes straight from Cognito over
        TLS in answer to our own call, so nothing else could have produced it."""
        payload = self.id_token.split(".")[1]
        claims: dict[str, Any] = json.loads(
            base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        )
        return claims


@dataclass(frozen=True)
class Profile:
    sub: str
    email: str | None
    name: str | None
    country_code: str | None
    enabled: bool


_policies: dict[str, tuple[float, dict[str, Any]]] = {}
_POLICY_TTL_S = 600.0
# The app client's secret per (pool, client), None for a client without one; per process.
_secrets: dict[tuple[str, str], str | None] = {}
_secrets_lock = threading.Lock()
# Cognito's limit on UserContextData.EncodedData is not documented; the SDKs' output is a few KB.
MAX_ENCODED_CONTEXT_DATA = 16 * 1024


@dataclass(frozen=True)
class CallerContext:
    """Who is signing in, for threat protection: API Gateway's `sourceIp` of the request and
    the app's encoded context data (Cognito's advanced security SDK output), when sent."""

    source_ip: str
    encoded_data: str | None = None

    def user_context_data(self) -> dict[str, str]:
        data: dict[str, str] = {}
        with contextlib.suppress(ValueError):  # no address rather than one Cognito refuses
            data["IpAddress"] = str(ipaddress.ip_address(self.source_ip))
        if self.encoded_data:
            data["EncodedData"] = self.encoded_data
        return data


def secret_hash(client_secret: str, username: str, client_id: str) -> str:
    """Cognito's SECRET_HASH: Base64(HMAC-SHA256(key=client secret, username + client id))."""
    digest = hmac.new(
        client_secret.encode("utf-8"), (username + client_id).encode("utf-8"), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def client_secret(settings: CognitoSettings) -> str | None:
    """The app client's secret, read once per execution environment (DescribeUserPoolClient)."""
    key = (settings.user_pool_id, settings.client_id)
    with _secrets_lock:
        if key in _secrets:
            return _secrets[key]
    try:
        described = _client(settings).describe_user_pool_client(
            UserPoolId=settings.user_pool_id, ClientId=settings.client_id
        )
    except (ClientError, BotoCoreError) as error:
        if _unavailable(error):
            raise CognitoUnavailable("describe_user_pool_client") from None
        raise
    secret = described.get("UserPoolClient", {}).get("ClientSecret") or None
    with _secrets_lock:
        _secrets[key] = secret
    return secret


def forget_client_secrets() -> None:
    """Tests: the next sign-in reads the secret again."""
    with _secrets_lock:
        _secrets.clear()


def _client(settings: CognitoSettings) -> Any:
    return aws.client("cognito-idp", settings.region, settings.endpoint_url)


def _code(error: ClientError) -> str:
    return str(error.response.get("Error", {}).get("Code", ""))


def _unavailable(error: Exception) -> bool:
    if isinstance(error, BotoCoreError):
        return True
    return isinstance(error, ClientError) and _code(error) in _UNAVAILABLE_ERRORS


def _tokens(result: Mapping[str, Any]) -> Tokens:
    return Tokens(
        access_token=str(result["AccessToken"]),
        id_token=str(result["IdToken"]),
        refresh_token=str(result["RefreshToken"]) if result.get("RefreshToken") else None,
        expires_in=int(result.get("ExpiresIn") or 3600),
    )


def _token_call(settings: CognitoSettings, operation: str, **params: Any) -> Tokens:
    try:
        response = getattr(_client(settings), operation)(ClientId=settings.client_id, **params)
    except ClientError as error:
        if _code(error) in _CREDENTIAL_ERRORS:
            raise CredentialsRejected from None
        if _unavailable(error):
            raise CognitoUnavailable(_code(error)) from None
        raise
    except BotoCoreError as error:
        raise CognitoUnavailable(type(error).__name__) from None
    if "AuthenticationResult" not in response:
        raise ChallengeRequired(str(response.get("ChallengeName") or "UNKNOWN"))
    return _tokens(response["AuthenticationResult"])


def sign_in(settings: CognitoSettings, email: str, password: str, caller: CallerContext) -> Tokens:
    parameters = {"USERNAME": email, "PASSWORD": password}
    secret = client_secret(settings)
    if secret is not None:
        parameters["SECRET_HASH"] = secret_hash(secret, email, settings.client_id)
    context = caller.user_context_data()
    return _token_call(
        settings,
        "initiate_auth",
        AuthFlow="USER_PASSWORD_AUTH",
        AuthParameters=parameters,
        **({"UserContextData": context} if context else {}),
    )


def refresh(settings: CognitoSettings, refresh_token: str) -> Tokens:
    """New access and ID tokens (the refresh token is not rotated: the client's rotation is
    off, so Cognito answers without a new one)."""
    secret = client_secret(settings)
    return _token_call(
        settings,
        "get_tokens_from_refresh_token",
        RefreshToken=refresh_token,
        **({"ClientSecret": secret} if secret is not None else {}),
    )


def _admin(settings: CognitoSettings, operation: str, **params: Any) -> Any:
    try:
        return getattr(_client(settings), operation)(UserPoolId=settings.user_pool_id, **params)
    except (ClientError, BotoCoreError) as error:
        if _unavailable(error):
            raise CognitoUnavailable(operation) from None
        raise


def password_policy(settings: CognitoSettings) -> dict[str, Any]:
    """The pool's password policy (cached for a few minutes)."""
    cached = _policies.get(settings.user_pool_id)
    if cached is not None and time.monotonic() - cached[0] < _POLICY_TTL_S:
        return cached[1]
    pool = _admin(settings, "describe_user_pool")["UserPool"]
    policy = dict(pool.get("Policies", {}).get("PasswordPolicy", {}))
    _policies[settings.user_pool_id] = (time.monotonic(), policy)
    return policy


def create_viewer(
    settings: CognitoSettings, email: str, password: str, name: str, country_code: str | None
) -> None:
    """A confirmed account with a permanent password in the viewer group, and nothing else:
    no attribute but these, no other group, whatever the request asked for."""
    attributes = [
        {"Name": "email", "Value": email},
        {"Name": "name", "Value": name},
    ]
    if country_code is not None:
        attributes.append({"Name": "custom:country_code", "Value": country_code})
    try:
        _admin(
            settings,
            "admin_create_user",
            Username=email,
            UserAttributes=attributes,
            MessageAction="SUPPRESS",
        )
    except ClientError as error:
        if _code(error) in ("UsernameExistsException", "AliasExistsException"):
            raise AccountExists from None
        raise
    try:
        _admin(
            settings, "admin_set_user_password", Username=email, Password=password, Permanent=True
        )
        _admin(settings, "admin_add_user_to_group", Username=email, GroupName="viewer")
    except Exception as error:
        # No half-made account: without its password or its group it could not be used.
        try:
            _admin(settings, "admin_delete_user", Username=email)
        except Exception:
            logger.exception("register: could not delete the half-made account")
        if isinstance(error, ClientError) and _code(error) == "InvalidPasswordException":
            message = str(error.response.get("Error", {}).get("Message") or "")
            raise WeakPassword(message) from None
        raise


def profile(settings: CognitoSettings, username: str) -> Profile:
    try:
        user = _admin(settings, "admin_get_user", Username=username)
    except ClientError as error:
        if _code(error) == "UserNotFoundException":
            raise CredentialsRejected from None
        raise
    attributes = {a["Name"]: a["Value"] for a in user.get("UserAttributes", [])}
    return Profile(
        sub=str(attributes.get("sub") or username),
        email=attributes.get("email"),
        name=attributes.get("name"),
        country_code=attributes.get("custom:country_code") or None,
        enabled=bool(user.get("Enabled", True)),
    )


def groups(settings: CognitoSettings, username: str) -> list[str]:
    response = _admin(settings, "admin_list_groups_for_user", Username=username, Limit=60)
    return sorted(str(group["GroupName"]) for group in response.get("Groups", []))


def sign_out_everywhere(
    settings: CognitoSettings, *, access_token: str | None, username: str
) -> None:
    """Revokes every refresh token of the user (and, for Cognito's own APIs, their access
    tokens). With the caller's access token this is the user's own GlobalSignOut; a caller
    who sent an ID token is signed out by name with AdminUserGlobalSignOut."""
    try:
        if access_token is not None:
            _client(settings).global_sign_out(AccessToken=access_token)
        else:
            _admin(settings, "admin_user_global_sign_out", Username=username)
    except ClientError as error:
        if _code(error) == "NotAuthorizedException":
            return  # already signed out: this token was revoked by an earlier sign-out
        if _unavailable(error):
            raise CognitoUnavailable("global_sign_out") from None
        raise
    except BotoCoreError as error:
        raise CognitoUnavailable(type(error).__name__) from None


def policy_failures(password: str, policy: Mapping[str, Any]) -> list[str]:
    """What `password` lacks under `policy` (Cognito's rules), empty when it complies."""
    failures = []
    minimum = int(policy.get("MinimumLength") or 8)
    if len(password) < minimum:
        failures.append(f"at least {minimum} characters")
    if policy.get("RequireUppercase") and not any(c.isupper() for c in password):
        failures.append("an upper-case letter")
    if policy.get("RequireLowercase") and not any(c.islower() for c in password):
        failures.append("a lower-case letter")
    if policy.get("RequireNumbers") and not any(c.isdigit() for c in password):
        failures.append("a number")
    if policy.get("RequireSymbols") and not any(c in POLICY_SYMBOLS for c in password):
        failures.append("a symbol")
    return failures


def describe_policy(policy: Mapping[str, Any]) -> dict[str, Any]:
    """The policy as the client is shown it."""
    return {
        "minimumLength": int(policy.get("MinimumLength") or 8),
        "requireUppercase": bool(policy.get("RequireUppercase")),
        "requireLowercase": bool(policy.get("RequireLowercase")),
        "requireNumbers": bool(policy.get("RequireNumbers")),
        "requireSymbols": bool(policy.get("RequireSymbols")),
    }
