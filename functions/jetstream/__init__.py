"""JetStream topology on deploy (custom resource) and the JetStream health probe."""
