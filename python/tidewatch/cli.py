"""The `tidewatch` command line (`python -m tidewatch`, or the `tidewatch` console script).

Each subcommand lives in its own module under ``tidewatch.commands`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable taking the parsed
arguments and returning an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = (
    "demo",
    "evaluate",
    "incidents",
    "convert",
    "replay",
    "simulate",
)


def build_parser() -> argparse.ArgumentParser:
    from tidewatch import __version__

    parser = argparse.ArgumentParser(
        prog="tidewatch",
        description="Real-time anomaly detection for industrial control systems.",
    )
    parser.add_argument("--version", action="version", version=f"tidewatch {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"tidewatch.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    from tidewatch.errors import TidewatchError

    try:
        return int(args.func(args) or 0)
    except TidewatchError as exc:
        print(f"tidewatch {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tidewatch {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
