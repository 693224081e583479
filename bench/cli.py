"""What every benchmark's command line does: `--help` prints its description and exits before
anything starts, and SIGTERM leaves through the `finally` blocks that stop its servers and
remove its temporary folders (as Ctrl-C does)."""

from __future__ import annotations

import argparse
import signal
import sys


def start(prog: str, description: str | None, argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    arguments = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return arguments
