"""The local stack: real PostgreSQL (primary + streaming replica), real nats-server, and a
gateway that serves all six regions by invoking the deployed handler files in-process."""
