"""The `fenxiao` console script: one entry point, each subcommand delegating to its module."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

err = Console(stderr=True)


class CliError(Exception):
    """A one-line error for the user that says what to do."""


def _stack(args: argparse.Namespace) -> int:
    from streams import stack

    return stack.run_command(args.action)


def _worker(args: argparse.Namespace) -> int:
    from streams import worker

    try:
        return worker.run(args.config, args.loglevel)
    except worker.WorkerError as e:
        raise CliError(str(e)) from e


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their flags."""
    p = argparse.ArgumentParser(prog="fenxiao", description="Streaming commission engine for distribution programs.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("stack", help="start, stop or show the local Kafka and Redis")
    s.add_argument("action", choices=["up", "down", "status"])
    s.set_defaults(func=_stack)

    w = sub.add_parser("worker", help="run the commission worker in the foreground")
    w.add_argument("--config", help="the program config, fenxiao.toml (default: $FENXIAO_CONFIG or ./fenxiao.toml)")
    w.add_argument("--loglevel", default="info", choices=["debug", "info", "warning", "error"])
    w.set_defaults(func=_worker)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, dispatch, and turn known failures into one readable line."""
    args = build_parser().parse_args(argv)
    try:
        rc: int = args.func(args)
        return rc
    except CliError as e:
        err.print(f"[bold red]error:[/] {e}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
