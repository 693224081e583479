-- The mobile contract: sign-in throttling, sign-out everywhere, and offline-sync bookkeeping.
-- Every table here lives on the primary (writes) and is read on replicas only where noted.

-- ---------------------------------------------------------------------------------------------
-- Sign-in throttling (POST /auth/login, /auth/refresh, /auth/register).
--
-- One row per attempt that has not succeeded: it is written before Cognito is asked, so that
-- concurrent attempts count each other (an attempt sees every attempt committed before its own
-- count), and deleted when the attempt succeeds. A sliding window over `attempted_at` gives the
-- count per account and per source address. Accounts are stored as the SHA-256 of the
-- normalised email, never the email itself.
-- ---------------------------------------------------------------------------------------------

CREATE TABLE auth_failures (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_key text CHECK (account_key ~ '^[0-9a-f]{64}$'),
    address text NOT NULL CHECK (length(address) BETWEEN 1 AND 64),
    attempted_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX auth_failures_account ON auth_failures (account_key, attempted_at)
    WHERE account_key IS NOT NULL;
CREATE INDEX auth_failures_address ON auth_failures (address, attempted_at);
CREATE INDEX auth_failures_attempted_at ON auth_failures (attempted_at);

-- ---------------------------------------------------------------------------------------------
-- Sign-out everywhere (POST /auth/logout).
--
-- Cognito's global sign-out revokes refresh tokens, but API Gateway's JWT authorizer keeps
-- accepting access and ID tokens until they expire. A token of `sub` issued before
-- `revoked_at` (whole seconds: `iat` has no finer resolution) is refused by the functions.
-- One row per user, overwritten by each sign-out; read on replicas.
-- ---------------------------------------------------------------------------------------------

CREATE TABLE token_revocations (
    sub text PRIMARY KEY CHECK (length(sub) BETWEEN 1 AND 128),
    revoked_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Offline sync (GET/POST /sync).
--
-- Tombstones are kept for a configurable retention and then pruned. `pruned_through` is the
-- largest change number of any pruned tombstone: a client whose cursor is below it may have
-- missed a delete, so it gets a full replacement pull instead of an incremental one. Pruning
-- deletes the tombstones and raises the mark in one transaction, so a replica sees both or
-- neither.
-- ---------------------------------------------------------------------------------------------

CREATE TABLE sync_horizon (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    pruned_through bigint NOT NULL DEFAULT 0 CHECK (pruned_through >= 0),
    pruned_at timestamptz
);
INSERT INTO sync_horizon DEFAULT VALUES;

-- The cursor a pull hands out. Never below the pruning mark: pruning the newest tombstones
-- of an otherwise idle database must not move cursors backwards.
CREATE FUNCTION sync_cursor() RETURNS bigint
    LANGUAGE sql STABLE AS $$
    SELECT GREATEST(current_change_cursor(), (SELECT pruned_through FROM sync_horizon))
$$;

-- Pushes applied, by the SHA-256 of (user, last_pulled_at, changes): a retried push finds its
-- receipt and is answered without being applied again. Written in the push's own transaction,
-- so a receipt exists exactly when its changes were committed; a concurrent identical push
-- waits on the key and then finds it.
CREATE TABLE sync_push_receipts (
    id text PRIMARY KEY CHECK (id ~ '^[0-9a-f]{64}$'),
    actor_sub text NOT NULL CHECK (length(actor_sub) BETWEEN 1 AND 128),
    last_pulled_at bigint NOT NULL CHECK (last_pulled_at >= 0),
    response jsonb,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sync_push_receipts_applied_at ON sync_push_receipts (applied_at);
