"""The hostile-documents benchmark: `.venv/bin/python -m bench.hostile_documents` from the
repository root (or `.venv/bin/python bench/hostile_documents.py`).

A generator builds GraphQL documents meant to be expensive to check: repeated nested
selections, duplicate fields, conflicting aliases, deep nesting, fragment fan-out, directives,
variables and operations by the thousand, repeats nested up to the repeat limit, and random
mixes of them. Each family is built twice: as large as the body limit admits (64 KiB,
GRAPHQL_MAX_BODY_BYTES, less the JSON around the query: what the audit sent), and as large as
the body and the parser's token limit (GRAPHQL_MAX_TOKENS) admit, the worst a request can
still bring to validation. For each document it measures the CPU time (this process's,
`time.process_time`) of:

- the baseline the audit of issue 15 (item 9) measured: graphql-core's public path with no
  guard, `parse()` then `validate()` with the specification's rules (3.3-4.3 s for its worst
  63 KB document);
- the subject: the GraphQL function's `engine.prepare`, which parses, checks and validates a
  request before anything runs, with the deployed limits (introspection off, as deployed).

The two alternate document by document (baseline, subject, baseline, ...), so that whatever
load the machine carries weighs on both alike. Target: no document costs the subject more than
50 ms of CPU ("tens of milliseconds"). It measures and prints; nothing here asserts on time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator

if __name__ == "__main__" and not __package__:
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"

BODY_LIMIT = 65_536
TARGET_MS = 50.0
RANDOM_DOCUMENTS = 24
SEED = 15  # the number: the same documents every run
ROUNDS = 3  # each document measured this many times per path; the median counts


def _tokens(text: str) -> int:
    from graphql.language import Lexer, Source, TokenKind

    lexer, count = Lexer(Source(text)), 0
    while lexer.advance().kind != TokenKind.EOF:
        count += 1
    return count


Fits = Callable[[str], bool]


def _within_the_body(text: str) -> bool:
    """Whether the document, sent as {"query": ...}, stays within the body limit."""
    return len(json.dumps({"query": text}).encode("utf-8")) <= BODY_LIMIT


def _within_the_limits(text: str) -> bool:
    """Within the body limit and the parser's token limit."""
    from graphql_api.api import GraphQLSettings

    if not _within_the_body(text):
        return False
    try:
        return _tokens(text) <= GraphQLSettings.load().limits.max_tokens
    except Exception:  # a syntax error (nesting too deep for the lexer's caller): the body decides
        return True


def _largest(fits: Fits, build: Callable[[int], str], start: int = 1) -> str:
    """build(n) for the largest n whose document fits (doubling, then bisecting)."""
    low, high = start, start
    while fits(build(high)):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(build(middle)) else (low, middle)
    return build(low)


# Each family: its name, and the document of n repeats of its pattern.
_FAMILIES: tuple[tuple[str, Callable[[int], str]], ...] = (
    (
        "repeated nested selections",
        lambda n: (
            "{" + " countries { nodes { region { countries { nodes { name } } } } }" * n + " }"
        ),
    ),
    ("duplicate fields", lambda n: "{ regions {" + " code" * n + " } }"),
    ("conflicting aliases", lambda n: "{ regions {" + " a: code a: name" * n + " } }"),
    (
        "conflicting aliases, nested",
        lambda n: "{" + " a: countries { nodes { b: name b: iso2 } }" * n + " }",
    ),
    (
        "deep nesting",
        lambda n: "{ " + "countries { nodes { region { " * n + "code" + " } } }" * n + " }",
    ),
    (
        "fragment fan-out",
        lambda n: (
            "{ regions { ...F0 } } "
            + " ".join(
                f"fragment F{i} on Region {{ code ...F{i + 1} ...F{i + 1} }}" for i in range(n)
            )
            + f" fragment F{n} on Region {{ name }}"
        ),
    ),
    (
        "fragments spread everywhere",
        lambda n: "{ regions {" + " ...R" * n + " } } fragment R on Region { code name }",
    ),
    ("directives", lambda n: "{ regions { code" + " @include(if: true)" * n + " } }"),
    (
        "variables",
        lambda n: "query (" + ", ".join(f"$v{i}: Int" for i in range(n)) + ") { regions { code } }",
    ),
    ("operations", lambda n: " ".join(f"query Q{i} {{ regions {{ code }} }}" for i in range(n))),
    (
        "aliased root fields",
        lambda n: "{" + "".join(f" a{i}: regions {{ code }}" for i in range(n)) + " }",
    ),
    (
        "nested list argument",
        lambda n: "{ countries(first: " + "[" * n + "1" + "]" * n + ") { totalCount } }",
    ),
    ("unknown fields", lambda n: "{ regions {" + "".join(f" f{i}" for i in range(n)) + " } }"),
)


def _families(fits: Fits) -> Iterator[tuple[str, str]]:
    for name, build in _FAMILIES:
        yield name, _largest(fits, build)


def _repeats_at_the_limit(fits: Fits) -> Iterator[tuple[str, str]]:
    """k copies of a nested selection at each of d levels (k^d - 1 repeats, within
    GRAPHQL_MAX_REPEATS), the deepest level padded with aliased leaves that every copy shares:
    validation compares each pair of copies, level by level, leaf by leaf."""
    from graphql_api.api import GraphQLSettings

    max_repeats = GraphQLSettings.load().limits.max_repeats
    for copies, levels in ((2, 5), (3, 3), (7, 2), (max_repeats + 1, 1)):
        if copies**levels - 1 > max_repeats:
            continue

        def build(leaves: int, copies: int = copies, levels: int = levels) -> str:
            inner = "{" + "".join(f" l{i}: name" for i in range(leaves)) + " }"  # a Country's
            for _ in range(levels):
                inner = "{" + f" projects {{ nodes {{ country {inner} }} }}" * copies + " }"
            return "{ countries { nodes " + inner + " } }"

        yield f"{copies} copies x {levels} levels", _largest(fits, build)


_PIECES = (
    " countries { nodes { name region { code } } }",
    " a: regions { code }",
    " a: sectors { id }",
    " regions { code code name }",
    " ...F",
    " __typename",
    " countries(first: 50) { nodes { projects { nodes { id } } } }",
)


def _random_documents(rng: random.Random, fits: Fits) -> Iterator[tuple[str, str]]:
    """Random mixes of the pieces above, nested at random depths, each grown to the limit."""
    for number in range(RANDOM_DOCUMENTS):
        pieces = rng.sample(_PIECES, k=rng.randint(2, len(_PIECES)))
        depth = rng.randint(0, 3)

        def build(n: int, pieces: list[str] = pieces, depth: int = depth) -> str:
            body = "".join(pieces[i % len(pieces)] for i in range(n))
            inner = "{" + body + " }"
            for _ in range(depth):
                inner = "{ countries { nodes { region " + inner.replace("...F", "code") + " } } }"
            return inner + " fragment F on Query { regions { code } }"

        yield f"random mix {number + 1}", _largest(fits, build)


def _tokens_or_none(text: str) -> str:
    try:
        return str(_tokens(text))
    except Exception:
        return "-"


def main() -> None:
    import graphql

    from graphql_api import engine
    from graphql_api.api import GraphQLSettings
    from graphql_api.schema import executable_schema

    schema = executable_schema()
    limits = dataclasses.replace(GraphQLSettings.load().limits, introspection=False)

    def baseline(text: str) -> None:
        with contextlib.suppress(graphql.GraphQLError):
            graphql.validate(schema, graphql.parse(text))

    def subject(text: str) -> None:
        engine.documents.clear()
        with contextlib.suppress(engine.RequestErrors):
            engine.prepare(schema, text, None, None, limits)

    def cpu_ms(run: Callable[[str], None], text: str) -> float:
        started = time.process_time()
        run(text)
        return (time.process_time() - started) * 1000

    worst_base: tuple[float, str] = (0.0, "")
    worst_subject: tuple[float, str] = (0.0, "")
    for fits, label, rounds in (
        (_within_the_body, f"as large as a {BODY_LIMIT}-byte body admits (the audit's)", 1),
        (_within_the_limits, f"as large as the body and {limits.max_tokens} tokens admit", ROUNDS),
    ):
        documents = [
            *_families(fits),
            *_repeats_at_the_limit(fits),
            *_random_documents(random.Random(SEED), fits),
        ]
        print(f"\n{len(documents)} documents, each {label}; median of {rounds} per path")
        print(
            f"{'document':32} {'KiB':>5} {'tokens':>6} {'baseline ms':>12} {'subject ms':>11}"
            "  answer"
        )
        for name, text in documents:
            base, mine = [], []
            for _ in range(rounds):
                base.append(cpu_ms(baseline, text))
                mine.append(cpu_ms(subject, text))
            base_ms, mine_ms = statistics.median(base), statistics.median(mine)
            try:
                engine.documents.clear()
                engine.prepare(schema, text, None, None, limits)
                answer = "runs"
            except engine.RequestErrors as refused:
                answer = "refused: " + str(refused.errors[0].get("message", ""))[:60]
            print(
                f"{name:32} {len(text.encode()) / 1024:5.1f} {_tokens_or_none(text):>6} "
                f"{base_ms:12.1f} {mine_ms:11.1f}  {answer}",
                flush=True,
            )
            worst_base = max(worst_base, (base_ms, name))
            worst_subject = max(worst_subject, (mine_ms, name))
    print()
    print(f"worst case, baseline (parse + validate): {worst_base[0]:8.1f} ms  ({worst_base[1]})")
    print(
        f"worst case, engine.prepare:              {worst_subject[0]:8.1f} ms  ({worst_subject[1]})"
    )
    verdict = "MET" if worst_subject[0] <= TARGET_MS else "NOT MET"
    print(f"target: every document within {TARGET_MS:.0f} ms of CPU: {verdict}")


if __name__ == "__main__":
    from bench.cli import start

    start("python -m bench.hostile_documents", __doc__)
    main()
