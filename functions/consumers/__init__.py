"""The JetStream consumers' Lambda functions (covenant.consumer runs their loop)."""
