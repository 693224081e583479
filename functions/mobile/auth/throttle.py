"""Throttling of repeated sign-in failures, per account and per source address, in PostgreSQL
on the primary (`auth_failures`, migration 0006), so every region and every warm Lambda
shares one count.

An attempt is counted before Cognito is asked and counts as failed until it succeeds. Counting
is one short transaction that first takes a transaction-level advisory lock on the account and
on the address (always in that order, so two attempts cannot deadlock), then counts the window
and, under the limit, inserts its row: concurrent attempts on one account or address queue for
a few milliseconds and exactly the limit get through, never more and never fewer. A refused
attempt writes nothing (waiting must not extend the lock-out), a successful one removes its
row and the account's failures, and one that ended for another reason (Cognito unavailable)
removes its row. The window slides: Retry-After is when enough of the counted attempts will
have left it.

Registrations are also limited per address, successful ones included (else one address could
create accounts as fast as Cognito allows). A registration attempt's row carries the
`REGISTRATIONS` key instead of an account, counted under the same address lock: it counts as a
registration until it ends, stays one when it succeeds, becomes an address failure when it
fails (the email had an account) and goes when it is abandoned. Failure counts leave those rows
out, so registering never uses up an address's sign-in failures.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

from covenant.db import Database, writer
from covenant.uow import UnitOfWork
from mobile.http import TooManyRequests
from mobile.settings import ThrottleSettings

logger = logging.getLogger(__name__)

# Serialises the attempts on one key; released at COMMIT or ROLLBACK. The prefixes keep the
# account and address key spaces apart.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(CAST(:key AS text), 0))"

_EXPIRE = """
DELETE FROM auth_failures WHERE id IN (
    SELECT id FROM auth_failures
    WHERE attempted_at < now() - make_interval(secs => CAST(:window_s AS double precision))
    ORDER BY attempted_at LIMIT 100 FOR UPDATE SKIP LOCKED)
"""

# The key of registration rows: the hash of no email (accounts hash "covenant-auth:<email>").
REGISTRATIONS = hashlib.sha256(b"covenant-registrations").hexdigest()

_INSERT = (
    "INSERT INTO auth_failures (account_key, address) VALUES (:account, :address) RETURNING id"
)

_COUNT = """
SELECT
    (SELECT count(*) FROM auth_failures
     WHERE account_key = CAST(:account AS text)
       AND attempted_at > now() - make_interval(secs => CAST(:window_s AS double precision)))
        AS account_count,
    (SELECT count(*) FROM auth_failures
     WHERE address = :address
       AND account_key IS DISTINCT FROM CAST(:registrations AS text)
       AND attempted_at > now() - make_interval(secs => CAST(:window_s AS double precision)))
        AS address_count,
    (SELECT count(*) FROM auth_failures
     WHERE address = :address AND account_key = CAST(:registrations AS text)
       AND attempted_at > now() - make_interval(secs => CAST(:window_s AS double precision)))
        AS registration_count
"""

# Seconds until the row at `skip` (oldest first) of a count leaves the window.
_RETRY_AFTER = {
    count: f"""
SELECT ceil(extract(epoch FROM attempted_at
                    + make_interval(secs => CAST(:window_s AS double precision))
                    - clock_timestamp()))::int
FROM auth_failures
WHERE {condition}
  AND attempted_at > now() - make_interval(secs => CAST(:window_s AS double precision))
ORDER BY attempted_at OFFSET :skip LIMIT 1
"""  # noqa: S608 - the condition is one of three held here; values are bound
    for count, condition in (
        ("account_count", "account_key = CAST(:key AS text)"),
        (
            "address_count",
            "address = :key AND account_key IS DISTINCT FROM CAST(:registrations AS text)",
        ),
        ("registration_count", "address = :key AND account_key = CAST(:registrations AS text)"),
    )
}

_REFUSED = "Too many failed attempts. Wait {seconds} seconds, then try again."
_REFUSED_REGISTRATION = (
    "Too many accounts registered from this address. Wait {seconds} seconds, then try again."
)


def account_key(email: str) -> str:
    """How an account is stored: the SHA-256 of its normalised email, never the email."""
    return hashlib.sha256(f"covenant-auth:{email.strip().lower()}".encode()).hexdigest()


@dataclass
class Attempt:
    """One counted attempt; settle it with exactly one of the three outcomes."""

    id: int
    account: str | None
    database: Database
    registration: bool = False

    def failed(self) -> None:
        """Wrong credentials: the row stays and counts until it leaves the window (a
        registration's as an address failure)."""
        if self.registration:
            with self.database.session() as session:
                session.run(
                    "UPDATE auth_failures SET account_key = NULL WHERE id = :id", id=self.id
                )

    def succeeded(self) -> None:
        """A sign-in clears the account's failures; a registration's row stays, counted."""
        if self.registration:
            return
        with self.database.session() as session:
            session.run(
                "DELETE FROM auth_failures WHERE id = :id "
                "OR (account_key = CAST(:account AS text))",
                id=self.id,
                account=self.account,
            )

    def abandoned(self) -> None:
        """Neither success nor a credential failure (e.g. Cognito was unavailable)."""
        with self.database.session() as session:
            session.run("DELETE FROM auth_failures WHERE id = :id", id=self.id)


class Throttle:
    def __init__(self, settings: ThrottleSettings, database: Database | None = None) -> None:
        self.settings = settings
        self.database = database or writer()

    def begin(self, *, account: str | None, address: str, registration: bool = False) -> Attempt:
        """Counts an attempt, or raises TooManyRequests (with Retry-After) when the account
        or the address has used up its failures in the window, or (`registration`) the
        address its registrations."""
        s = self.settings
        if registration:
            account = None
        with UnitOfWork(self.database) as uow:
            if account is not None:
                uow.run(_LOCK, key=f"auth-account:{account}")
            uow.run(_LOCK, key=f"auth-address:{address}")
            uow.run(_EXPIRE, window_s=s.window_s)
            counts = uow.one(
                _COUNT,
                account=account,
                address=address,
                window_s=s.window_s,
                registrations=REGISTRATIONS,
            )
            assert counts is not None
            limits = [("address_count", address, s.max_failures_per_address)]
            if account is not None:
                limits.insert(0, ("account_count", account, s.max_failures_per_account))
            if registration:
                limits.append(("registration_count", address, s.max_registrations_per_address))
            over = [
                (name, key, counts[name], limit)
                for name, key, limit in limits
                if counts[name] >= limit
            ]
            if not over:
                row_key = REGISTRATIONS if registration else account
                attempt_id = int(uow.scalar(_INSERT, account=row_key, address=address))
                return Attempt(attempt_id, account, self.database, registration)
            wait = 1
            for name, key, count, limit in over:
                # `count` attempts are in the window; the next may run once count - limit + 1
                # of them have left it, i.e. when the one at offset count - limit leaves.
                seconds = uow.scalar(
                    _RETRY_AFTER[name],
                    key=key,
                    window_s=s.window_s,
                    skip=count - limit,
                    registrations=REGISTRATIONS,
                )
                wait = max(wait, int(seconds or 1))
        # The unit of work committed nothing but the expiry: a refusal leaves no row.
        logger.info("auth throttled (%s)", ", ".join(name for name, *_ in over))
        failures = any(name != "registration_count" for name, *_ in over)
        message = _REFUSED if failures else _REFUSED_REGISTRATION
        raise TooManyRequests(message.format(seconds=wait), retry_after_s=wait)
