"""schema.graphql parsed at packaging time, so that a cold start does not parse it.

Parsing the SDL was the largest part of the function's own init (about 13 ms of the 20 ms that
building the executable schema took; loading the parsed document back takes about 1 ms). The
CDK app writes `schema.graphql.pickle` beside the SDL before it packages the function
(`write`); init loads it (`parsed_schema`) when it was written from this very SDL by this
graphql-core, and parses the SDL otherwise (a local run that never synthesized, an edited SDL):
the same document either way, only slower. The file is a build product, not committed.

Written only from valid SDL: graphql-core's SDL validation runs here, once per packaging,
instead of at every init. The document is parsed without locations (they only point schema
errors at lines of the SDL, and the schema is checked valid before this file is written).
The pickle is the project's own build output inside its own package, trusted as its code is.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from pathlib import Path

import graphql
from graphql import DocumentNode, GraphQLError, parse
from graphql.validation.validate import validate_sdl

SCHEMA_FILE = Path(__file__).with_name("schema.graphql")
CACHE_FILE = SCHEMA_FILE.with_name("schema.graphql.pickle")


def _key(sdl: str) -> str:
    """What the cached document depends on: the SDL text and graphql-core's node classes."""
    return f"{hashlib.sha256(sdl.encode()).hexdigest()} graphql-core {graphql.__version__}"


def sdl_errors(sdl: str) -> list[GraphQLError]:
    """What graphql-core's SDL validation finds in `sdl` (the check init leaves to packaging)."""
    return validate_sdl(parse(sdl))


def parsed_schema(sdl: str, cache: Path = CACHE_FILE) -> DocumentNode:
    """`sdl` parsed: from the packaged cache when it holds this SDL, else parsed now."""
    try:
        with cache.open("rb") as file:
            key, document = pickle.load(file)  # noqa: S301 - our own build output, see above
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, ValueError):
        return parse(sdl)
    return document if key == _key(sdl) and isinstance(document, DocumentNode) else parse(sdl)


def write(sdl_file: Path = SCHEMA_FILE, cache: Path = CACHE_FILE) -> Path:
    """Validates the SDL and writes its parsed document to `cache` (atomically; unchanged
    bytes for an unchanged SDL, so the package's asset hash does not move)."""
    sdl = sdl_file.read_text(encoding="utf-8")
    errors = sdl_errors(sdl)
    if errors:
        raise GraphQLError(f"{sdl_file} is not valid SDL: " + "; ".join(e.message for e in errors))
    data = pickle.dumps((_key(sdl), parse(sdl, no_location=True)), protocol=5)
    if cache.exists() and cache.read_bytes() == data:
        return cache
    partial = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
    partial.write_bytes(data)
    os.replace(partial, cache)
    return cache


if __name__ == "__main__":
    print(f"wrote {write()}", file=sys.stderr)
