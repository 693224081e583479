"""A local Amazon Cognito user pool, served by moto in server mode on a loopback port.

`make dev` starts `MotoServer` and calls `provision()`, which creates (or finds, when they
already exist) what the deployed stack will have: the user pool `covenant-local` with its
password policy, the groups `admin`, `editor` and `viewer` (the roles), the app client
`covenant-mobile` (confidential, as deployed: a client secret and
EnablePropagateAdditionalUserContextData; USER_PASSWORD_AUTH and refresh) and one user per
role. moto keeps its state in memory, so every start creates a new pool: ids change per start.

Where moto 5.2.5 falls short of Cognito for this client, `install_moto_gaps()` fills the gap
in the moto server of this process (nothing else is changed): GetTokensFromRefreshToken
(not implemented by moto) checks the client secret as Cognito does and answers new ID and
access tokens; InitiateAuth USER_PASSWORD_AUTH refuses a missing or wrong SECRET_HASH (moto
checks it for SRP and refresh only). UserContextData is accepted and ignored, as by moto.

What moto's tokens look like (moto 5.2.5, checked): RS256, header `kid` "dummy";
`iss` is `https://cognito-idp.<region>.amazonaws.com/<pool id>`, the real Cognito issuer; the
access token carries `client_id`, `token_use: access`, `scope`, `username` and
`cognito:groups` (a JSON array), the ID token `aud`, `token_use: id`, `email`, `name`,
`cognito:username` and `cognito:groups`. The key set is served at
`<endpoint>/<pool id>/.well-known/jwks.json`. Its private key ships inside the moto package,
so anyone can sign tokens this pool accepts: these are local test identities, never trust a
moto pool outside a developer's machine.

The credentials below are local-only test credentials, documented in the README.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.session
from moto.cognitoidp.exceptions import NotAuthorizedError
from moto.cognitoidp.models import RegionAgnosticBackend
from moto.cognitoidp.responses import CognitoIdpResponse
from moto.core.responses import ActionResult
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from covenant.regions import primary_region
from devstack.errors import DevStackError

POOL_NAME = "covenant-local"
CLIENT_NAME = "covenant-mobile"
GROUPS: dict[str, str] = {
    "admin": "Administrators: every query and mutation, user management",
    "editor": "Editors: create and update countries and projects",
    "viewer": "Viewers: read only",
}
# Dummy credentials for moto; never the developer's real AWS credentials.
MOTO_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}


@dataclass(frozen=True)
class SeededUser:
    email: str
    password: str
    name: str
    group: str


# Local-only test credentials (README, "Local users"). They satisfy the pool's password policy.
SEEDED_USERS: tuple[SeededUser, ...] = (
    SeededUser("admin@covenant.local", "Covenant-Admin-2026!", "Covenant Admin", "admin"),
    SeededUser("editor@covenant.local", "Covenant-Editor-2026!", "Covenant Editor", "editor"),
    SeededUser("viewer@covenant.local", "Covenant-Viewer-2026!", "Covenant Viewer", "viewer"),
)

PASSWORD_POLICY = {
    "MinimumLength": 12,
    "RequireUppercase": True,
    "RequireLowercase": True,
    "RequireNumbers": True,
    "RequireSymbols": True,
    "TemporaryPasswordValidityDays": 7,
}


def cognito_client(endpoint_url: str | None, region: str) -> Any:
    """A boto3 `cognito-idp` client for `endpoint_url` (moto) with dummy credentials. It reads
    nothing from the developer's AWS configuration: no profile, config or credentials file."""
    core = botocore.session.Session(
        session_vars={
            "profile": (None, None, None, None),
            "config_file": (None, None, os.devnull, None),
            "credentials_file": (None, None, os.devnull, None),
        }
    )
    session = boto3.session.Session(botocore_session=core, region_name=region, **MOTO_CREDENTIALS)
    return session.client("cognito-idp", endpoint_url=endpoint_url)


@dataclass(frozen=True)
class LocalCognito:
    """A provisioned user pool: what the gateway's JWT verifier and the functions need."""

    endpoint_url: str
    region: str
    user_pool_id: str
    client_id: str
    issuer: str  # the `iss` of its tokens, as in AWS
    jwks_url: str  # where moto serves the pool's key set
    # The app client's secret: the functions read it from the pool (DescribeUserPoolClient),
    # as in AWS; kept here for login(). Never printed.
    client_secret: str = field(repr=False, default="")

    @property
    def users(self) -> tuple[SeededUser, ...]:
        return SEEDED_USERS

    def client(self) -> Any:
        return cognito_client(self.endpoint_url, self.region)

    def login(self, email: str, password: str) -> dict[str, Any]:
        """InitiateAuth USER_PASSWORD_AUTH, as the app does: the `AuthenticationResult`
        (AccessToken, IdToken, RefreshToken, ExpiresIn, TokenType)."""
        response = self.client().initiate_auth(
            ClientId=self.client_id,
            AuthFlow="USER_PASSWORD_AUTH",
            AuthParameters={
                "USERNAME": email,
                "PASSWORD": password,
                "SECRET_HASH": secret_hash(self.client_secret, email, self.client_id),
            },
        )
        result: dict[str, Any] = response["AuthenticationResult"]
        return result

    def environment(self) -> dict[str, str]:
        """The Cognito settings of the functions' environment (the CDK app sets the same
        names, without COGNITO_ENDPOINT_URL)."""
        return {
            "COGNITO_USER_POOL_ID": self.user_pool_id,
            "COGNITO_CLIENT_ID": self.client_id,
            "COGNITO_ENDPOINT_URL": self.endpoint_url,
            "COGNITO_REGION": self.region,
        }


def secret_hash(client_secret: str, username: str, client_id: str) -> str:
    """Cognito's SECRET_HASH: Base64(HMAC-SHA256(key=client secret, username + client id))."""
    digest = hmac.new(
        client_secret.encode("utf-8"), (username + client_id).encode("utf-8"), hashlib.sha256
    ).digest()
    return base64.b64encode(digest).decode("ascii")


def issuer_for(region: str, user_pool_id: str) -> str:
    return f"https://cognito-idp.{region}.amazonaws.com/{user_pool_id}"


def provision(endpoint_url: str, region: str | None = None) -> LocalCognito:
    """Creates the pool, groups, app client and seeded users at `endpoint_url`, reusing any
    that exist already (found by name), and (re)sets each seeded user's password and group."""
    region = region or primary_region().aws_region
    client = cognito_client(endpoint_url, region)
    pool_id = _find_pool(client) or _create_pool(client)
    client_id = _find_client(client, pool_id) or _create_client(client, pool_id)
    secret = client.describe_user_pool_client(UserPoolId=pool_id, ClientId=client_id)[
        "UserPoolClient"
    ]["ClientSecret"]
    for group, description in GROUPS.items():
        with contextlib.suppress(client.exceptions.GroupExistsException):
            client.create_group(UserPoolId=pool_id, GroupName=group, Description=description)
    for user in SEEDED_USERS:
        _ensure_user(client, pool_id, user)
    return LocalCognito(
        endpoint_url=endpoint_url,
        region=region,
        user_pool_id=pool_id,
        client_id=client_id,
        issuer=issuer_for(region, pool_id),
        jwks_url=f"{endpoint_url}/{pool_id}/.well-known/jwks.json",
        client_secret=str(secret),
    )


def _pages(client: Any, operation: str, key: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
    token: str | None = None
    while True:
        page = getattr(client, operation)(**kwargs, **({"NextToken": token} if token else {}))
        yield from page.get(key, [])
        token = page.get("NextToken")
        if not token:
            return


def _find_pool(client: Any) -> str | None:
    for pool in _pages(client, "list_user_pools", "UserPools", MaxResults=60):
        if pool["Name"] == POOL_NAME:
            return str(pool["Id"])
    return None


def _create_pool(client: Any) -> str:
    pool = client.create_user_pool(
        PoolName=POOL_NAME,
        UsernameAttributes=["email"],
        AutoVerifiedAttributes=["email"],
        Policies={"PasswordPolicy": PASSWORD_POLICY},
        Schema=[
            {"Name": "email", "AttributeDataType": "String", "Required": True, "Mutable": True},
            {"Name": "name", "AttributeDataType": "String", "Required": True, "Mutable": True},
            # The user's country (ISO alpha-3), optional: GET /auth/me reports it.
            {
                "Name": "country_code",
                "AttributeDataType": "String",
                "Mutable": True,
                "StringAttributeConstraints": {"MinLength": "3", "MaxLength": "3"},
            },
        ],
        AdminCreateUserConfig={"AllowAdminCreateUserOnly": True},
        MfaConfiguration="OFF",
    )
    return str(pool["UserPool"]["Id"])


def _find_client(client: Any, pool_id: str) -> str | None:
    for app in _pages(
        client, "list_user_pool_clients", "UserPoolClients", UserPoolId=pool_id, MaxResults=60
    ):
        if app["ClientName"] == CLIENT_NAME:
            return str(app["ClientId"])
    return None


def _create_client(client: Any, pool_id: str) -> str:
    app = client.create_user_pool_client(
        UserPoolId=pool_id,
        ClientName=CLIENT_NAME,
        # Confidential, as deployed (stacks/auth.py): Cognito takes the caller's context data
        # (UserContextData) only from a client with a secret and this flag.
        GenerateSecret=True,
        EnablePropagateAdditionalUserContextData=True,
        ExplicitAuthFlows=["ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"],
        # What the ID token carries (moto copies readable attributes into it, as Cognito does).
        ReadAttributes=["email", "email_verified", "name", "custom:country_code"],
        PreventUserExistenceErrors="ENABLED",
        AccessTokenValidity=60,
        IdTokenValidity=60,
        RefreshTokenValidity=30,
        TokenValidityUnits={"AccessToken": "minutes", "IdToken": "minutes", "RefreshToken": "days"},
    )
    return str(app["UserPoolClient"]["ClientId"])


def _ensure_user(client: Any, pool_id: str, user: SeededUser) -> None:
    try:
        client.admin_get_user(UserPoolId=pool_id, Username=user.email)
    except client.exceptions.UserNotFoundException:
        client.admin_create_user(
            UserPoolId=pool_id,
            Username=user.email,
            UserAttributes=[
                {"Name": "email", "Value": user.email},
                {"Name": "email_verified", "Value": "true"},
                {"Name": "name", "Value": user.name},
            ],
            MessageAction="SUPPRESS",
        )
    client.admin_set_user_password(
        UserPoolId=pool_id, Username=user.email, Password=user.password, Permanent=True
    )
    client.admin_add_user_to_group(UserPoolId=pool_id, Username=user.email, GroupName=user.group)


def _moto_client(backend: RegionAgnosticBackend, client_id: str) -> Any:
    for pool in backend._find_backend_for_clientid(client_id).user_pools.values():
        if client_id in pool.clients:
            return pool, pool.clients[client_id]
    raise NotAuthorizedError("Invalid client id")


def _get_tokens_from_refresh_token(self: CognitoIdpResponse) -> ActionResult:
    """GetTokensFromRefreshToken as Cognito answers it for a client without refresh token
    rotation: the client secret must match; new ID and access tokens, no refresh token."""
    client_id = str(self._get_param("ClientId"))
    backend = self._get_region_agnostic_backend()
    pool, app = _moto_client(backend, client_id)
    if app.generate_secret and not hmac.compare_digest(
        str(self._get_param("ClientSecret") or ""), str(app.secret)
    ):
        raise NotAuthorizedError(f"Client {client_id} is configured with secret")
    refresh_token = str(self._get_param("RefreshToken") or "")
    known = pool.refresh_tokens.get(refresh_token)
    if known is None or known[0] != client_id:
        raise NotAuthorizedError("Invalid Refresh Token")
    access_token, id_token, expires_in = pool.create_tokens_from_refresh_token(refresh_token)
    return ActionResult(
        {
            "AuthenticationResult": {
                "AccessToken": access_token,
                "IdToken": id_token,
                "ExpiresIn": expires_in,
                "TokenType": "Bearer",
            }
        }
    )


_moto_initiate_auth = CognitoIdpResponse.initiate_auth


def _initiate_auth(self: CognitoIdpResponse) -> ActionResult:
    """moto's InitiateAuth, plus Cognito's SECRET_HASH check for USER_PASSWORD_AUTH."""
    client_id = str(self._get_param("ClientId"))
    parameters = self._get_param("AuthParameters") or {}
    if self._get_param("AuthFlow") == "USER_PASSWORD_AUTH":
        _, app = _moto_client(self._get_region_agnostic_backend(), client_id)
        expected = secret_hash(str(app.secret), str(parameters.get("USERNAME", "")), client_id)
        if app.generate_secret and not hmac.compare_digest(
            str(parameters.get("SECRET_HASH") or ""), expected
        ):
            raise NotAuthorizedError(f"Unable to verify secret hash for client {client_id}")
    return _moto_initiate_auth(self)


def install_moto_gaps() -> None:
    """Fills the gaps of the module docstring in this process's moto (idempotent)."""
    CognitoIdpResponse.get_tokens_from_refresh_token = _get_tokens_from_refresh_token  # type: ignore[attr-defined]
    CognitoIdpResponse.initiate_auth = _initiate_auth  # type: ignore[method-assign]


class _QuietRequestHandler(MotoRequestHandler):
    """No access line per request (the gateway logs its own); errors are still logged."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        return


class MotoServer(ThreadedMotoServer):
    """moto in server mode on a loopback port, in a thread of this process. Every AWS API moto
    serves is there (Cognito now; queues and secrets later), at one endpoint URL."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        install_moto_gaps()
        super().__init__(ip_address=host, port=port, verbose=False)
        self.host = host
        self.port = port
        self._error: BaseException | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def _server_entry(self) -> None:
        # ThreadedMotoServer's own entry, with a quiet request handler; a failure to bind is
        # reported to start() instead of leaving it waiting forever.
        try:
            app = DomainDispatcherApplication(create_backend_app)
            self._server = make_server(
                self._ip_address,
                self._port,
                app,
                True,
                request_handler=_QuietRequestHandler,
            )
        except BaseException as exc:
            self._error = exc
            self._server_ready_event.set()
            return
        self._server_ready_event.set()
        self._server.serve_forever()

    def start(self) -> None:
        super().start()
        if self._error is not None:
            raise DevStackError(
                f"moto (local AWS APIs) could not listen on {self.host}:{self.port}: {self._error}"
            )

    def stop(self) -> None:
        server = self._server
        if server is None:
            return
        super().stop()
        server.server_close()
        self._server = None


def start_local_cognito(port: int, region: str | None = None) -> tuple[MotoServer, LocalCognito]:
    """Starts moto on `port` and provisions the pool; stop the server when done."""
    server = MotoServer(port)
    server.start()
    try:
        return server, provision(server.endpoint_url, region)
    except BaseException:
        server.stop()
        raise
