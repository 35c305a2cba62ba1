"""`dlnn`: a table of commands. Each module contributes `COMMANDS` = {name: (configure(parser),
run(args) -> exit code)}. A user error (UsageError, ConfigError) prints one clear message and
exits 1; the traceback is shown only with --debug. Output piped into a reader that leaves early
(`dlnn status --json | head -1`) ends quietly."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import warnings

from dlnn_core.errors import ConfigError, shorten

from ..errors import UsageError


def commands() -> dict:
    from . import ops, study, train

    return {**train.COMMANDS, **study.COMMANDS, **ops.COMMANDS}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are user errors like any other: one line and exit 1 (argparse's own
    exit 2 would read as `dlnn train`'s "diverged")."""

    def error(self, message: str):
        raise UsageError(f"{shorten(message, 300)} (see `{self.prog} --help`)")


def build_parser() -> argparse.ArgumentParser:
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks and library warnings")
    parser = _Parser(prog="dlnn", parents=[debug],
                     description="Hyperparameter studies for dissipative Lagrangian neural networks.")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (configure, run) in commands().items():
        doc = (run.__doc__ or "").strip()
        p = sub.add_parser(name, parents=[debug], help=doc.split("\n")[0], description=doc)
        configure(p)
        p.set_defaults(_run=run)
    return parser


class _Version(argparse.Action):
    """`dlnn --version`; the installed metadata is read only when asked (it costs every other command's start)."""

    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {version()}")
        parser.exit()


def version() -> str:
    """The installed package's version (pyproject.toml's), or "unknown" when it runs uninstalled from a checkout."""
    from importlib.metadata import PackageNotFoundError, version as installed

    try:
        return installed("dlnn-studies")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run one command; a closed stdout (the reader of a pipe left) ends it quietly with the exit status
    of a program killed by SIGPIPE (141), as `cat`'s would be, instead of a BrokenPipeError traceback."""
    try:
        try:
            return _main(argv)
        finally:
            if sys.stdout is not None:  # buffered output meets the closed pipe here, where it can still be caught
                sys.stdout.flush()
    except BrokenPipeError:
        # Python's recipe (docs: signal, "Note on SIGPIPE"): point stdout at devnull so the flush at exit is silent.
        # Restoring SIGPIPE's default instead would also kill a worker or server that writes to a closed socket.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except UsageError as exc:
        print(f"dlnn: error: {exc}", file=sys.stderr)
        return 1
    debug = getattr(args, "debug", False)
    if not debug:
        import optuna
        from optuna.exceptions import ExperimentalWarning

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        warnings.filterwarnings("ignore", category=ExperimentalWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        return int(args._run(args) or 0)
    except (UsageError, ConfigError) as exc:
        if debug:
            raise
        print(f"dlnn {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"dlnn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
