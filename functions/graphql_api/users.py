"""The user directory: Cognito users and their roles (the groups admin, editor and viewer),
through boto3 `cognito-idp`. Nothing here knows GraphQL.

Settings come from the function's environment (covenant.config): COGNITO_USER_POOL_ID (the
CDK app and `make dev` set it; a pool id starts with its region, where it is called),
COGNITO_ENDPOINT_URL locally (moto; unset in AWS, where the function role's IAM policy allows
exactly the admin calls made here).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from covenant import aws
from covenant.config import ConfigError, env
from covenant.identity import ROLES

logger = logging.getLogger(__name__)


class UserNotFound(Exception):
    """No user of the pool has that user name or email."""


class DirectoryUnavailable(RuntimeError):
    """Cognito could not be asked or refused the call (the details are for the log)."""


@dataclass(frozen=True)
class Directory:
    user_pool_id: str
    region: str
    endpoint_url: str | None

    @classmethod
    def load(cls) -> Directory:
        pool = env("COGNITO_USER_POOL_ID") or ""
        if not pool:
            raise ConfigError("COGNITO_USER_POOL_ID must be set to manage user roles")
        return cls(
            user_pool_id=pool,
            region=aws.user_pool_region(pool),
            endpoint_url=env("COGNITO_ENDPOINT_URL") or None,
        )


@dataclass(frozen=True)
class User:
    username: str  # the pool's user name (a UUID in a pool that signs in by email)
    sub: str
    email: str | None

    def describe(self) -> dict[str, Any]:
        return {"sub": self.sub, "username": self.username, "email": self.email}


def _client(directory: Directory) -> Any:
    return aws.client("cognito-idp", directory.region, directory.endpoint_url)


def _unavailable(call: str, error: Exception) -> DirectoryUnavailable:
    return DirectoryUnavailable(f"cognito-idp {call} failed: {error}")


def find_user(directory: Directory, name: str) -> User:
    """The user whose user name, or email, is `name`."""
    try:
        found = _client(directory).admin_get_user(UserPoolId=directory.user_pool_id, Username=name)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") == "UserNotFoundException":
            raise UserNotFound(name) from None
        raise _unavailable("AdminGetUser", error) from error
    except BotoCoreError as error:
        raise _unavailable("AdminGetUser", error) from error
    attributes = {a["Name"]: a["Value"] for a in found.get("UserAttributes", [])}
    username = str(found["Username"])
    return User(
        username=username, sub=attributes.get("sub", username), email=attributes.get("email")
    )


def roles_of(directory: Directory, user: User) -> frozenset[str]:
    """The user's roles: the groups among admin, editor and viewer it belongs to."""
    client = _client(directory)
    groups: set[str] = set()
    token: str | None = None
    try:
        while True:
            page = client.admin_list_groups_for_user(
                UserPoolId=directory.user_pool_id,
                Username=user.username,
                Limit=60,
                **({"NextToken": token} if token else {}),
            )
            groups.update(str(g["GroupName"]) for g in page.get("Groups", []))
            token = page.get("NextToken")
            if not token:
                break
    except (ClientError, BotoCoreError) as error:
        raise _unavailable("AdminListGroupsForUser", error) from error
    return frozenset(groups.intersection(ROLES))


def enabled_admins(directory: Directory) -> frozenset[str]:
    """The subs of the enabled users in the admin group (a disabled admin cannot act)."""
    client = _client(directory)
    subs: set[str] = set()
    token: str | None = None
    try:
        while True:
            page = client.list_users_in_group(
                UserPoolId=directory.user_pool_id,
                GroupName="admin",
                Limit=60,
                **({"NextToken": token} if token else {}),
            )
            for user in page.get("Users", []):
                if not user.get("Enabled", True):
                    continue
                attributes = {a["Name"]: a["Value"] for a in user.get("Attributes", [])}
                subs.add(str(attributes.get("sub") or user["Username"]))
            token = page.get("NextToken")
            if not token:
                break
    except (ClientError, BotoCoreError) as error:
        raise _unavailable("ListUsersInGroup", error) from error
    return frozenset(subs)


Change = tuple[str, str]  # ("add" | "remove", group)


def set_role(directory: Directory, user: User, role: str, current: Iterable[str]) -> list[Change]:
    """Leaves the user with exactly `role`: adds it first, then removes the other roles, so
    the user is never without a role. Returns the changes made (for `undo`). If a call fails,
    the calls already made are undone and DirectoryUnavailable is raised: the roles stay
    `current`."""
    client = _client(directory)
    steps: list[Change] = [("add", role)] if role not in current else []
    steps += [("remove", other) for other in sorted(current) if other != role]
    done: list[Change] = []
    for operation, group in steps:
        try:
            _call(client, directory, user, operation, group)
        except (ClientError, BotoCoreError) as error:
            undo(directory, user, done)
            raise _unavailable(f"{operation} {group}", error) from error
        done.append((operation, group))
    return done


def undo(directory: Directory, user: User, done: list[Change]) -> None:
    """Reverses the group changes `done`, last first. Raises DirectoryUnavailable when one
    cannot be reversed (then the user's roles need an operator: the error says which)."""
    client = _client(directory)
    for operation, group in reversed(done):
        try:
            _call(client, directory, user, _opposite(operation), group)
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(
                f"undo of {operation} {group} for user {user.username}", error
            ) from error


def _opposite(operation: str) -> str:
    return "remove" if operation == "add" else "add"


def _call(client: Any, directory: Directory, user: User, operation: str, group: str) -> None:
    if operation == "add":
        call = client.admin_add_user_to_group
    else:
        call = client.admin_remove_user_from_group
    call(UserPoolId=directory.user_pool_id, Username=user.username, GroupName=group)
