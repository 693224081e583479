"""python -m devstack {run,invoke,tail,reset,migrate}: the local stack's command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from covenant.db import DatabaseUnavailable
from covenant.migrate import MigrationError
from covenant.regions import RegionTableError
from devstack.errors import DevStackError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run_cmd = commands.add_parser("run", help="run the local six-region stack (make dev)")
    run_cmd.add_argument("--port", type=int, help="gateway port (default 8000, env COVENANT_PORT)")
    run_cmd.add_argument(
        "--data-dir", type=Path, help="data folder (default .local, env COVENANT_DATA_DIR)"
    )

    invoke_cmd = commands.add_parser(
        "invoke", help="invoke a function with a JSON event file and print its response"
    )
    invoke_cmd.add_argument("function", help="function name, e.g. mobile")
    invoke_cmd.add_argument("event", type=Path, help="event file, e.g. events/health.json")
    invoke_cmd.add_argument("--region", help="region code (default: the event's stage)")

    tail_cmd = commands.add_parser(
        "tail", help="print a JetStream stream's events live (make tail STREAM=COVENANT)"
    )
    tail_cmd.add_argument("stream", nargs="?", default="COVENANT")
    tail_cmd.add_argument("--last", type=int, default=10, help="stored events to show first")

    reset_cmd = commands.add_parser(
        "reset", help="delete the local stack's data so the next run starts fresh (make reset)"
    )
    reset_cmd.add_argument(
        "--data-dir", type=Path, help="data folder (default .local, env COVENANT_DATA_DIR)"
    )

    commands.add_parser(
        "migrate", help="apply migrations and seed data to DATABASE_URL (what the deploy runs)"
    )

    args = parser.parse_args(argv)
    from devstack.gateway import configure_logging

    configure_logging()
    try:
        if args.command == "run":
            from devstack.stack import StackOptions, run

            # One EMF line per request would bury the gateway's output; opt in with
            # POWERTOOLS_METRICS_DISABLED=false. Powertools reads the process environment at
            # every flush, and this process is the stack's alone.
            os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")

            run(StackOptions.from_environment(port=args.port, data_dir=args.data_dir))
        elif args.command == "reset":
            from devstack.stack import StackOptions, reset

            reset(StackOptions.from_environment(data_dir=args.data_dir))
        elif args.command == "invoke":
            from devstack.invoke import invoke_file
            from devstack.runtime import FunctionFailed

            try:
                response = invoke_file(args.function, args.event, args.region)
            except FunctionFailed as failed:
                print(json.dumps(failed.document, indent=2), flush=True)
                return 1
            print(json.dumps(response, indent=2, default=str))
        elif args.command == "tail":
            from devstack.tail import main as tail_main

            tail_main(args.stream, args.last)
        elif args.command == "migrate":
            from covenant.migrate import migrate
            from covenant.seed import seed

            applied = migrate()
            result = seed()
            # The seed is idempotent: these are the data set's sizes, in place after the run,
            # not rows inserted by it.
            print(
                f"applied {len(applied)} migration(s); seed data in place: {result.regions} "
                f"regions, {result.sectors} sectors, {result.countries} countries, "
                f"{result.projects} seed projects (rows already there are left as they are)"
            )
    except (DevStackError, RegionTableError, DatabaseUnavailable, MigrationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
