"""GraphQL subscriptions over API Gateway WebSocket APIs (docs/realtime.md)."""
