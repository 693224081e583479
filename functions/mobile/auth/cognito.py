"""The Cognito user pool, through boto3 `cognito-idp`: every call the auth routes make, with
Cognito's errors turned into the few outcomes the routes distinguish.

Sign-in uses InitiateAuth with USER_PASSWORD_AUTH on the public app client (no secret, no IAM
permission needed; the client allows USER_PASSWORD_AUTH and refresh). Registration, profile
reads and sign-out by ID token use the Admin* APIs, which need the function's IAM role:
the pool is created with AllowAdminCreateUserOnly, so no one can sign up around the rules of
POST /auth/register (viewer role only). Nothing here logs a token or a password.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from covenant import aws
from mobile.settings import CognitoSettings

logger = logging.getLogger(__name__)

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


def _initiate_auth(
    settings: CognitoSettings, flow: str, parameters: dict[str, str], source_ip: str
) -> Tokens:
    try:
        response = _client(settings).initiate_auth(
            ClientId=settings.client_id,
            AuthFlow=flow,
            AuthParameters=parameters,
            # Feeds Cognito's threat protection with the real client address, not ours.
            UserContextData={"IpAddress": source_ip},
        )
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


def sign_in(settings: CognitoSettings, email: str, password: str, source_ip: str) -> Tokens:
    return _initiate_auth(
        settings, "USER_PASSWORD_AUTH", {"USERNAME": email, "PASSWORD": password}, source_ip
    )


def refresh(settings: CognitoSettings, refresh_token: str, source_ip: str) -> Tokens:
    return _initiate_auth(
        settings, "REFRESH_TOKEN_AUTH", {"REFRESH_TOKEN": refresh_token}, source_ip
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
