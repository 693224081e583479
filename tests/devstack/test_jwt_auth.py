"""The local JWT authorizer: tokens from the moto user pool, tokens we sign ourselves against
a key set we serve, and the gateway refusing or admitting requests as API Gateway does."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from covenant.regions import primary_region
from covenant.topology import AUTH_MODES, FunctionSpec, Route, parse_functions
from devstack.cognito import (
    CLIENT_NAME,
    GROUPS,
    POOL_NAME,
    SEEDED_USERS,
    LocalCognito,
    MotoServer,
    provision,
    start_local_cognito,
)
from devstack.gateway import Gateway
from devstack.jwt_auth import (
    JwtVerifier,
    Unauthorized,
    api_gateway_claim,
    authorizer_context,
)
from devstack.processes import free_port, port_in_use
from devstack.runtime import FunctionConfig
from devstack.stack import DevStack, StackOptions

HERE = Path(__file__).resolve().parent
ISSUER = "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_TestPool1"
CLIENT_ID = "4testclient0id0abcdefghijk"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def _claims(segment: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))


# --- moto: the local user pool --------------------------------------------------------------


@pytest.fixture(scope="module")
def cognito() -> Iterator[LocalCognito]:
    server, pool = start_local_cognito(free_port())
    yield pool
    server.stop()


@pytest.fixture(scope="module")
def verifier(cognito: LocalCognito) -> JwtVerifier:
    return JwtVerifier(issuer=cognito.issuer, audience=cognito.client_id, jwks_url=cognito.jwks_url)


@pytest.fixture(scope="module")
def tokens(cognito: LocalCognito) -> dict[str, dict[str, Any]]:
    return {user.group: cognito.login(user.email, user.password) for user in SEEDED_USERS}


def test_the_pool_is_provisioned_as_documented(cognito: LocalCognito) -> None:
    client = cognito.client()
    pool = client.describe_user_pool(UserPoolId=cognito.user_pool_id)["UserPool"]
    assert pool["Name"] == POOL_NAME
    policy = pool["Policies"]["PasswordPolicy"]
    assert policy["MinimumLength"] == 12
    assert all(
        policy[name]
        for name in ("RequireUppercase", "RequireLowercase", "RequireNumbers", "RequireSymbols")
    )
    groups = client.list_groups(UserPoolId=cognito.user_pool_id)["Groups"]
    assert {g["GroupName"] for g in groups} == set(GROUPS) == {"admin", "editor", "viewer"}
    app = client.describe_user_pool_client(
        UserPoolId=cognito.user_pool_id, ClientId=cognito.client_id
    )["UserPoolClient"]
    assert app["ClientName"] == CLIENT_NAME
    # Confidential, as deployed: the mobile function signs in with SECRET_HASH and the
    # caller's UserContextData.
    assert app["ClientSecret"] == cognito.client_secret
    assert app["EnablePropagateAdditionalUserContextData"] is True
    assert set(app["ExplicitAuthFlows"]) == {"ALLOW_USER_PASSWORD_AUTH", "ALLOW_REFRESH_TOKEN_AUTH"}
    for user in SEEDED_USERS:
        found = client.admin_get_user(UserPoolId=cognito.user_pool_id, Username=user.email)
        attributes = {a["Name"]: a["Value"] for a in found["UserAttributes"]}
        assert (attributes["email"], attributes["name"]) == (user.email, user.name)
        assert found["UserStatus"] == "CONFIRMED"
        in_groups = client.admin_list_groups_for_user(
            UserPoolId=cognito.user_pool_id, Username=user.email
        )["Groups"]
        assert [g["GroupName"] for g in in_groups] == [user.group]
    with pytest.raises(client.exceptions.InvalidPasswordException):
        client.admin_set_user_password(
            UserPoolId=cognito.user_pool_id,
            Username="viewer@covenant.local",
            Password="alllowercase-but-long",
            Permanent=True,
        )


def test_issuer_and_key_set_are_where_moto_serves_them(cognito: LocalCognito, tokens) -> None:
    assert cognito.region == primary_region().aws_region == "us-east-1"
    assert cognito.issuer == f"https://cognito-idp.us-east-1.amazonaws.com/{cognito.user_pool_id}"
    well_known = f"{cognito.endpoint_url}/{cognito.user_pool_id}/.well-known"
    assert cognito.jwks_url == f"{well_known}/jwks.json"
    with urllib.request.urlopen(cognito.jwks_url, timeout=10) as response:
        keys = json.loads(response.read())["keys"]
    assert [(k["kid"], k["kty"], k["alg"]) for k in keys] == [("dummy", "RSA", "RS256")]
    access = _claims(tokens["admin"]["AccessToken"].split(".")[1])
    assert access["iss"] == cognito.issuer


def test_provisioning_again_reuses_the_pool(cognito: LocalCognito) -> None:
    again = provision(cognito.endpoint_url)
    assert again == cognito
    user = SEEDED_USERS[0]
    assert cognito.login(user.email, user.password)["AccessToken"]


def test_a_wrong_password_is_refused(cognito: LocalCognito) -> None:
    with pytest.raises(ClientError) as refused:
        cognito.login("admin@covenant.local", "Wrong-Password-2026!")
    assert refused.value.response["Error"]["Code"] == "NotAuthorizedException"


@pytest.mark.parametrize("user", SEEDED_USERS, ids=lambda u: u.group)
def test_every_seeded_user_gets_tokens_that_verify(user, verifier, tokens, cognito) -> None:
    result = tokens[user.group]
    assert result["TokenType"] == "Bearer"
    access = verifier.verify(f"Bearer {result['AccessToken']}")
    assert access["token_use"] == "access"
    assert access["client_id"] == cognito.client_id
    assert access["cognito:groups"] == [user.group]
    identity = verifier.verify(f"Bearer {result['IdToken']}")
    assert identity["token_use"] == "id"
    assert identity["aud"] == cognito.client_id
    assert identity["cognito:groups"] == [user.group]
    assert (identity["email"], identity["name"]) == (user.email, user.name)
    assert identity["sub"] == access["sub"]


def test_a_bare_token_is_accepted_like_api_gateway_does(verifier, tokens) -> None:
    # API Gateway's identity source may hold the token alone or prefixed with "Bearer ".
    assert verifier.verify(tokens["viewer"]["AccessToken"])["token_use"] == "access"
    assert verifier.verify(f"bearer  {tokens['viewer']['AccessToken']} ")["token_use"] == "access"


def test_a_token_from_another_app_client_or_pool_is_refused(cognito, tokens) -> None:
    other_client = JwtVerifier(
        issuer=cognito.issuer, audience="someotherclient", jwks_url=cognito.jwks_url
    )
    other_pool = JwtVerifier(
        issuer=cognito.issuer + "x", audience=cognito.client_id, jwks_url=cognito.jwks_url
    )
    for token in (tokens["admin"]["AccessToken"], tokens["admin"]["IdToken"]):
        with pytest.raises(Unauthorized, match="audience"):
            other_client.verify(f"Bearer {token}")
        with pytest.raises(Unauthorized, match=r"issuer|iss"):
            other_pool.verify(f"Bearer {token}")


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        (None, "no Authorization"),
        ("", "no Authorization"),
        ("Bearer", "does not hold a JWT"),
        ("Bearer ", "no Authorization|does not hold a JWT"),
        ("Basic YWRtaW46cGFzc3dvcmQ=", "not Bearer"),
        ("Bearer not-a-token", "does not hold a JWT"),
        ("Bearer a.b.c", "malformed"),
        ("Bearer " + "x" * 40 + ".e30.", "malformed"),
    ],
)
def test_missing_and_garbage_headers_are_refused(verifier, header, reason) -> None:
    with pytest.raises(Unauthorized, match=reason):
        verifier.verify(header)


def test_a_token_with_another_scheme_is_refused(verifier, tokens) -> None:
    with pytest.raises(Unauthorized, match="not Bearer"):
        verifier.verify(f"Token {tokens['admin']['AccessToken']}")


def _resigned(token: str, header: dict[str, Any], signature: bytes = b"") -> str:
    """The token's payload under a new header and signature."""
    return f"{_segment(header)}.{token.split('.')[1]}.{_b64(signature)}"


def test_alg_none_is_refused(verifier, tokens) -> None:
    token = tokens["viewer"]["AccessToken"]
    for alg in ("none", "None", "NONE"):
        forged = _resigned(token, {"alg": alg, "kid": "dummy", "typ": "JWT"})
        with pytest.raises(Unauthorized, match="algorithm"):
            verifier.verify(f"Bearer {forged}")
    # The same payload with admin rights added, unsigned: refused too.
    payload = _claims(token.split(".")[1]) | {"cognito:groups": ["admin"]}
    forged = f"{_segment({'alg': 'none', 'kid': 'dummy'})}.{_segment(payload)}."
    with pytest.raises(Unauthorized, match="algorithm"):
        verifier.verify(f"Bearer {forged}")


def test_hs256_tokens_are_refused(cognito, verifier, tokens) -> None:
    claims = _claims(tokens["viewer"]["AccessToken"].split(".")[1])
    random_secret = jwt.encode(claims, "s" * 32, algorithm="HS256", headers={"kid": "dummy"})
    with pytest.raises(Unauthorized, match="algorithm 'HS256'"):
        verifier.verify(f"Bearer {random_secret}")
    # Algorithm confusion: HMAC keyed with the issuer's public key, which anyone can fetch.
    with urllib.request.urlopen(cognito.jwks_url, timeout=10) as response:
        public = RSAAlgorithm.from_jwk(json.loads(response.read())["keys"][0])
    pem = public.public_bytes(  # type: ignore[union-attr]
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{_segment({'alg': 'HS256', 'kid': 'dummy'})}.{_segment(claims)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(Unauthorized, match="algorithm 'HS256'"):
        verifier.verify(f"Bearer {signing_input}.{_b64(mac)}")


def test_a_token_signed_by_another_key_with_the_same_kid_is_refused(verifier, tokens) -> None:
    claims = _claims(tokens["editor"]["AccessToken"].split(".")[1]) | {"cognito:groups": ["admin"]}
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(claims, other_key, algorithm="RS256", headers={"kid": "dummy"})
    with pytest.raises(Unauthorized, match="Signature verification failed"):
        verifier.verify(f"Bearer {forged}")


def test_a_tampered_payload_is_refused(verifier, tokens) -> None:
    header, payload, signature = tokens["viewer"]["AccessToken"].split(".")
    claims = _claims(payload) | {"cognito:groups": ["admin"]}
    with pytest.raises(Unauthorized, match="Signature verification failed"):
        verifier.verify(f"Bearer {header}.{_segment(claims)}.{signature}")


def test_claims_reach_the_event_in_api_gateway_shape(verifier, tokens) -> None:
    claims = verifier.verify(f"Bearer {tokens['editor']['AccessToken']}")
    context = authorizer_context(claims)
    assert set(context) == {"jwt"}
    assert context["jwt"]["scopes"] is None
    shaped = context["jwt"]["claims"]
    assert all(isinstance(value, str) for value in shaped.values())
    assert shaped["cognito:groups"] == "[editor]"
    assert shaped["exp"] == str(claims["exp"]) and shaped["exp"].isdigit()
    assert shaped["iat"] == str(claims["iat"])
    assert shaped["token_use"] == "access"
    assert shaped["scope"] == "aws.cognito.signin.user.admin"
    assert set(shaped) == set(claims)
    # The sample event of the repository has the same shape.
    sample = json.loads((HERE.parents[1] / "events" / "graphql_mutation.json").read_text())
    assert set(sample["requestContext"]["authorizer"]["jwt"]) == {"claims", "scopes"}
    assert sample["requestContext"]["authorizer"]["jwt"]["claims"]["cognito:groups"] == "[editor]"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("admin", "admin"),
        (["admin"], "[admin]"),
        (["admin", "editor"], "[admin editor]"),
        ([], "[]"),
        (1795865600, "1795865600"),
        (1795865600.0, "1795865600"),
        (1.5, "1.5"),
        (True, "true"),
        (False, "false"),
        ({"b": 1, "a": "x"}, "map[a:x b:1]"),
        (None, "<nil>"),
    ],
)
def test_claim_values_are_stringified_as_api_gateway_does(value, expected) -> None:
    assert api_gateway_claim(value) == expected


# --- tokens we sign ourselves, against a key set we serve ----------------------------------


@dataclass
class KeySet:
    """An issuer of our own: RSA keys, the JWKS it serves at `url`, and a fetch counter."""

    url: str = ""
    keys: dict[str, Any] = field(default_factory=dict)
    served: list[str] = field(default_factory=list)  # kids in the served JWKS
    fetches: int = 0
    down: bool = False

    def add_key(self, kid: str, serve: bool = True) -> Any:
        self.keys[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if serve:
            self.served.append(kid)
        return self.keys[kid]

    def jwks(self) -> dict[str, Any]:
        entries = []
        for kid in self.served:
            entry = RSAAlgorithm.to_jwk(self.keys[kid].public_key(), as_dict=True)
            entries.append(entry | {"kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": entries}

    def sign(
        self,
        kid: str = "key-1",
        *,
        alg: str = "RS256",
        drop: tuple[str, ...] = (),
        **overrides: Any,
    ) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": str(uuid.uuid4()),
            "iss": ISSUER,
            "client_id": CLIENT_ID,
            "token_use": "access",
            "scope": "aws.cognito.signin.user.admin",
            "auth_time": now,
            "iat": now,
            "exp": now + 3600,
            "jti": str(uuid.uuid4()),
            "username": "someone",
            "cognito:groups": ["viewer"],
        }
        claims.update(overrides)
        for name in drop:
            claims.pop(name, None)
        return jwt.encode(claims, self.keys[kid], algorithm=alg, headers={"kid": kid})


@pytest.fixture
def issuer() -> Iterator[KeySet]:
    keyset = KeySet()
    keyset.add_key("key-1")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            keyset.fetches += 1
            if keyset.down:
                self.send_error(503)
                return
            body = json.dumps(keyset.jwks()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    keyset.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    yield keyset
    server.shutdown()
    server.server_close()


def _verifier(keyset: KeySet, **options: Any) -> JwtVerifier:
    return JwtVerifier(
        issuer=ISSUER,
        audience=CLIENT_ID,
        jwks_url=keyset.url,
        **({"min_refresh_interval_s": 0.0} | options),
    )


def test_own_tokens_verify_as_access_and_id_tokens(issuer: KeySet) -> None:
    verifier = _verifier(issuer)
    assert verifier.verify(f"Bearer {issuer.sign()}")["token_use"] == "access"
    id_token = issuer.sign(token_use="id", aud=CLIENT_ID, drop=("client_id",))
    assert verifier.verify(f"Bearer {id_token}")["token_use"] == "id"
    listed = issuer.sign(token_use="id", aud=["other", CLIENT_ID], drop=("client_id",))
    assert verifier.verify(f"Bearer {listed}")["aud"] == ["other", CLIENT_ID]


@pytest.mark.parametrize(
    ("overrides", "drop", "reason"),
    [
        ({"exp": int(time.time()) - 60}, (), "expired"),
        ({"exp": "9999999999"}, (), "exp must be a number"),
        ({}, ("exp",), 'claim: "exp"|exp'),
        ({"nbf": int(time.time()) + 600}, (), "not yet valid"),
        ({"iat": int(time.time()) + 600}, (), "not yet valid"),
        ({"iss": "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Other"}, (), "issuer"),
        ({}, ("iss",), "iss"),
        ({"client_id": "another-client"}, (), "client_id 'another-client'"),
        ({}, ("client_id",), "client_id None"),
        # `aud` is evaluated when present, even next to a matching client_id.
        ({"aud": "another-client"}, (), "aud 'another-client'"),
        ({"aud": ["a", "b"]}, (), "aud"),
        ({"token_use": "refresh"}, (), "token_use 'refresh'"),
        ({}, ("token_use",), "token_use None"),
    ],
)
def test_own_tokens_with_bad_claims_are_refused(issuer: KeySet, overrides, drop, reason) -> None:
    token = issuer.sign(drop=drop, **overrides)
    with pytest.raises(Unauthorized, match=reason):
        _verifier(issuer).verify(f"Bearer {token}")


def test_a_little_clock_skew_is_tolerated(issuer: KeySet) -> None:
    now = int(time.time())
    token = issuer.sign(iat=now + 2, nbf=now + 2, exp=now + 3600)
    assert _verifier(issuer, leeway_s=5).verify(f"Bearer {token}")["iat"] == now + 2


def test_other_rsa_algorithms_are_refused_unless_allowed(issuer: KeySet) -> None:
    token = issuer.sign(alg="RS512")
    with pytest.raises(Unauthorized, match="algorithm 'RS512'"):
        _verifier(issuer).verify(f"Bearer {token}")
    # A key set that declares RS256 for the key refuses RS512 tokens even when allowed.
    with pytest.raises(Unauthorized, match="is for RS256"):
        _verifier(issuer, algorithms=("RS256", "RS512")).verify(f"Bearer {token}")
    with pytest.raises(ValueError, match="only RSA"):
        JwtVerifier(issuer=ISSUER, audience=CLIENT_ID, jwks_url=issuer.url, algorithms=("HS256",))


def test_a_token_without_kid_or_with_an_unknown_kid_is_refused(issuer: KeySet) -> None:
    verifier = _verifier(issuer)
    claims = _claims(issuer.sign().split(".")[1])
    no_kid = jwt.encode(claims, issuer.keys["key-1"], algorithm="RS256")
    with pytest.raises(Unauthorized, match="no kid"):
        verifier.verify(f"Bearer {no_kid}")
    issuer.add_key("not-published", serve=False)
    with pytest.raises(Unauthorized, match="'not-published' is not in the issuer's key set"):
        verifier.verify(f"Bearer {issuer.sign('not-published')}")


def test_the_key_set_is_cached_and_refetched_once_for_a_new_kid(issuer: KeySet) -> None:
    verifier = _verifier(issuer)
    for _ in range(3):
        verifier.verify(f"Bearer {issuer.sign()}")
    assert issuer.fetches == 1
    issuer.add_key("key-2")  # key rotation: the issuer publishes a new key
    assert verifier.verify(f"Bearer {issuer.sign('key-2')}")["iss"] == ISSUER
    assert issuer.fetches == 2
    verifier.verify(f"Bearer {issuer.sign('key-1')}")  # both keys are cached now
    assert issuer.fetches == 2
    # An unknown kid refetches once per request at most, and not more often than allowed.
    issuer.add_key("ghost", serve=False)
    with pytest.raises(Unauthorized):
        verifier.verify(f"Bearer {issuer.sign('ghost')}")
    assert issuer.fetches == 3
    limited = _verifier(issuer, min_refresh_interval_s=60)
    limited.verify(f"Bearer {issuer.sign()}")
    for _ in range(5):
        with pytest.raises(Unauthorized):
            limited.verify(f"Bearer {issuer.sign('ghost')}")
    assert issuer.fetches == 4


def test_an_unreachable_key_set_refuses_every_token(issuer: KeySet) -> None:
    issuer.down = True
    with pytest.raises(Unauthorized, match="cannot fetch the key set"):
        _verifier(issuer).verify(f"Bearer {issuer.sign()}")
    issuer.down = False
    assert _verifier(issuer).verify(f"Bearer {issuer.sign()}")["iss"] == ISSUER


# --- through the gateway -------------------------------------------------------------------

ECHO = FunctionSpec(
    "echo",
    "echo_handler.handler",
    "answers with requestContext.authorizer",
    (
        Route("GET", "/private", "jwt"),
        Route("POST", "/graphql", "jwt-optional"),
        Route("GET", "/public", "none"),
    ),
)


ECHOED: list[dict[str, Any]] = []  # the events the echo function answered with


def _gateway(verifier: JwtVerifier | None) -> Gateway:
    gateway = Gateway(
        0, {}, verifier=verifier, functions={"echo": FunctionConfig(ECHO, code_path=(str(HERE),))}
    )
    gateway.serve_in_thread()
    return gateway


@pytest.fixture(scope="module")
def gateway(verifier: JwtVerifier) -> Iterator[Gateway]:
    server = _gateway(verifier)
    yield server
    server.shutdown()


def _call(
    url: str, token: str | None = None, *, method: str = "GET", header: str | None = None
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if header is not None:
        headers["Authorization"] = header
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = b'{"query":"{ sectors { name } }"}' if method == "POST" else None
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
            ECHOED.append(answer["event"])
            return response.status, answer["authorizer"]
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_the_function_table_accepts_jwt_optional() -> None:
    assert AUTH_MODES == ("none", "jwt", "jwt-optional")
    parsed = parse_functions(
        {"g": {"handler": "g.handler", "routes": {"POST /graphql": "jwt-optional"}}}
    )
    assert parsed["g"].routes == (Route("POST", "/graphql", "jwt-optional"),)


def test_a_jwt_route_refuses_without_a_valid_token_and_never_invokes(
    gateway: Gateway, tokens
) -> None:
    url = f"{gateway.url}/ams/private"
    forged = _resigned(tokens["viewer"]["AccessToken"], {"alg": "none", "kid": "dummy"})
    before = gateway.runtime.invocations("echo")
    for header in (None, "Bearer garbage", f"Bearer {forged}", "Basic YWRtaW46YWRtaW4="):
        assert _call(url, header=header) == (401, {"message": "Unauthorized"})
    assert gateway.runtime.invocations("echo") == before


@pytest.mark.parametrize("kind", ["AccessToken", "IdToken"])
def test_a_jwt_route_passes_the_claims_of_a_valid_token(gateway, tokens, kind) -> None:
    status, body = _call(f"{gateway.url}/syd/private", tokens["admin"][kind])
    assert status == 200
    assert body["jwt"]["scopes"] is None
    claims = body["jwt"]["claims"]
    assert claims["cognito:groups"] == "[admin]"
    assert claims["token_use"] == ("access" if kind == "AccessToken" else "id")
    assert claims["exp"].isdigit()
    event = ECHOED[-1]
    assert event["requestContext"]["stage"] == "syd"
    assert event["headers"]["authorization"] == f"Bearer {tokens['admin'][kind]}"


def test_a_jwt_optional_route_admits_anonymous_requests(gateway, tokens) -> None:
    url = f"{gateway.url}/jnb/graphql"
    assert _call(url, method="POST") == (200, None)
    assert "authorizer" not in ECHOED[-1]["requestContext"]
    status, body = _call(url, tokens["editor"]["AccessToken"], method="POST")
    assert status == 200
    assert body["jwt"]["claims"]["cognito:groups"] == "[editor]"
    # A token that is sent must be valid: a bad one is refused, not ignored.
    before = gateway.runtime.invocations("echo")
    assert _call(url, "not.a.token", method="POST") == (401, {"message": "Unauthorized"})
    assert _call(url, header="", method="POST") == (401, {"message": "Unauthorized"})
    assert gateway.runtime.invocations("echo") == before


def test_a_route_without_auth_passes_no_claims(gateway, tokens) -> None:
    assert _call(f"{gateway.url}/iad/public", tokens["admin"]["AccessToken"]) == (200, None)
    assert "authorizer" not in ECHOED[-1]["requestContext"]


def test_without_a_verifier_the_gateway_fails_closed(tokens) -> None:
    gateway = _gateway(None)
    try:
        token = tokens["admin"]["AccessToken"]
        assert _call(f"{gateway.url}/iad/private", token) == (401, {"message": "Unauthorized"})
        assert _call(f"{gateway.url}/iad/graphql", method="POST") == (200, None)
        assert _call(f"{gateway.url}/iad/graphql", token, method="POST")[0] == 401
    finally:
        gateway.shutdown()


# --- the stack's wiring --------------------------------------------------------------------


def _options(tmp_path: Path, **overrides: Any) -> StackOptions:
    return StackOptions.isolated(tmp_path, **overrides)


def test_the_stack_starts_the_local_pool_and_hands_its_settings_on(tmp_path: Path) -> None:
    stack = DevStack(_options(tmp_path))
    stack._start_cognito()
    try:
        assert stack.cognito is not None and stack.verifier is not None
        assert stack.endpoints == {
            "COGNITO_USER_POOL_ID": stack.cognito.user_pool_id,
            "COGNITO_CLIENT_ID": stack.cognito.client_id,
            "COGNITO_ENDPOINT_URL": stack.cognito.endpoint_url,
            "COGNITO_REGION": "us-east-1",
        }
        user = SEEDED_USERS[1]
        token = stack.cognito.login(user.email, user.password)["AccessToken"]
        assert stack.verifier.verify(f"Bearer {token}")["cognito:groups"] == ["editor"]
    finally:
        stack.stop()
    assert stack.moto is None
    assert not port_in_use(stack.options.moto_port)


def test_cognito_mode_comes_from_the_environment(monkeypatch, tmp_path: Path) -> None:
    for name in ("COVENANT_COGNITO", "COGNITO_USER_POOL_ID", "COGNITO_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)
    assert StackOptions.from_environment(data_dir=tmp_path).cognito == "local"
    monkeypatch.setenv("COVENANT_COGNITO", "off")
    assert StackOptions.from_environment(data_dir=tmp_path).cognito == "off"
    monkeypatch.delenv("COVENANT_COGNITO")
    monkeypatch.setenv("COGNITO_USER_POOL_ID", "eu-west-1_AbCdEf123")
    with pytest.raises(Exception, match="both COGNITO_USER_POOL_ID and COGNITO_CLIENT_ID"):
        StackOptions.from_environment(data_dir=tmp_path)
    monkeypatch.setenv("COGNITO_CLIENT_ID", "abc123")
    monkeypatch.setenv("COGNITO_USER_POOL_ID", "not-a-pool")
    with pytest.raises(Exception, match="'not-a-pool' is not a user pool id"):
        StackOptions.from_environment(data_dir=tmp_path)
    monkeypatch.setenv("COGNITO_USER_POOL_ID", "eu-west-1_AbCdEf123")
    options = StackOptions.from_environment(data_dir=tmp_path)
    assert options.cognito == "remote"
    stack = DevStack(options)
    stack._start_cognito()  # nothing to start: only the verifier and the settings
    assert stack.moto is None and stack.verifier is not None
    assert (
        stack.verifier.issuer == "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_AbCdEf123"
    )
    assert stack.verifier.jwks_url == f"{stack.verifier.issuer}/.well-known/jwks.json"
    assert stack.endpoints["COGNITO_REGION"] == "eu-west-1"
    assert "COGNITO_ENDPOINT_URL" not in stack.endpoints


def test_a_busy_moto_port_is_reported(tmp_path: Path) -> None:
    first = MotoServer(free_port())
    first.start()
    try:
        second = MotoServer(first.port)
        with pytest.raises(Exception, match=f"could not listen on 127.0.0.1:{first.port}"):
            second.start()
        stack = DevStack(_options(tmp_path, moto_port=first.port))
        with pytest.raises(Exception, match=f"port {first.port} \\(moto"):
            stack.check_ports()
    finally:
        first.stop()
