"""The bridge Lambda: forwards outbox events into NATS JetStream, exactly once per event."""
