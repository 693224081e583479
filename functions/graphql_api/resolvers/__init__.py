"""Resolvers, one module per type of schema.graphql."""
