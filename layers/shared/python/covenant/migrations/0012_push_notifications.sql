-- Push notifications (covenant/notifications.py): what users follow, the devices they
-- registered for push, and which notification reached which device.
--
-- follows: a user follows a project (its id) or a country (its alpha-3 code); a change to the
-- project, or to any project in the country, notifies them. No foreign key: a deleted project
-- still notifies its followers of its deletion; MOBILE_PUSH then deletes its follows.
-- push_devices: one row per device token (SNS mobile push endpoint). A token registered by
-- another user moves to them (one phone, one signed-in user). Pruned when SNS reports the
-- endpoint disabled (APNs/FCM said the token is no longer valid).
-- push_deliveries: the NOTIFIER's idempotency record, one row per (notification, device) it
-- pushed to, so a redelivered notification pushes only to the devices it had not reached.
-- Kept a little longer than the NOTIFICATIONS stream keeps a message (7 days).

CREATE TABLE follows (
    user_sub text NOT NULL CHECK (length(user_sub) BETWEEN 1 AND 128),
    kind text NOT NULL CHECK (kind IN ('project', 'country')),
    target text NOT NULL CHECK (
        (kind = 'project' AND target ~ '^[0-9a-f-]{36}$')
        OR (kind = 'country' AND target ~ '^[A-Z]{3}$')
    ),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_sub, kind, target)
);
CREATE INDEX follows_by_target ON follows (kind, target);

CREATE TABLE push_devices (
    id uuid PRIMARY KEY,
    user_sub text NOT NULL CHECK (length(user_sub) BETWEEN 1 AND 128),
    platform text NOT NULL CHECK (platform IN ('apns', 'fcm')),
    token text NOT NULL CHECK (length(token) BETWEEN 8 AND 4096),
    endpoint_arn text NOT NULL CHECK (endpoint_arn LIKE 'arn:%'),
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (platform, token)
);
CREATE INDEX push_devices_by_user ON push_devices (user_sub);

CREATE TABLE push_deliveries (
    notification_id uuid NOT NULL,
    device_id uuid NOT NULL,
    sent_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (notification_id, device_id)
);
CREATE INDEX push_deliveries_by_sent_at ON push_deliveries (sent_at);
