"""Covenant's shared layer: configuration, database access, unit of work, outbox, migrations."""
