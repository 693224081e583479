"""The GraphQL query-mix benchmark: `.venv/bin/python -m bench.graphql` from the repository root
(or `.venv/bin/python bench/graphql.py`). The work is in bench/query_mix.py; this module only
makes both ways of running it work: run as a script, this folder would be sys.path[0] and this
very file would shadow graphql-core."""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and not __package__:
    sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Before Powertools is imported: no EMF metric blobs between the table rows.
os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"


def main() -> None:
    from bench.cli import start
    from bench.query_mix import __doc__ as described
    from bench.query_mix import main as run

    start("python -m bench.graphql", described)
    run()


if __name__ == "__main__":
    main()
