"""Benchmarks. They print measurements and never assert on time:
`python -m bench.graphql` (query mix against the handler) and `python -m bench.cold_start`."""
