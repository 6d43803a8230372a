"""Command-line entry point: ``rfgraph COMMAND ...``; each command lives in ``rfgraph/commands/``.

Exit codes: 0 success; 1 partial result (the analysis stopped at an unsupported node);
2 bad input (unreadable model, bad arguments); 3 internal error (a bug: please report it).
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
from collections.abc import Sequence
from typing import NoReturn

from . import __version__
from .errors import RFGraphError

# One module per command; each defines ``register(subparsers)`` that adds its parser and sets
# ``func(args) -> int``.  Add a command by adding its module name here.
COMMANDS = ["analyze", "boxes", "table", "erf", "show", "experiments", "report", "diagnose"]

EPILOG = """examples:
  rfgraph analyze model.onnx                      receptive field of every graph output
  rfgraph analyze model.onnx --all                one row per tensor
  rfgraph analyze zoo:resnet_v1_50 --format json  a bundled model_zoo graph, as JSON
  rfgraph boxes model.onnx --output feat --index 3,4
"""


class OneLineParser(argparse.ArgumentParser):
    """An argument error is one line naming the command and pointing to its ``--help`` (argparse
    printed the whole usage first: 7-16 lines before the one that mattered)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


NEGATIVE_VALUE = re.compile(r"^-\d+(\.\d+)?(,-?\d+(\.\d+)?)*$")  # -1 / -1,-1 / -0.5,2


def _attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--index -1,-1`` as ``--index=-1,-1``: argparse reads a value starting with '-' as an
    option unless it is a plain negative number, and said "expected one argument"."""
    out: list[str] = []
    for token in argv:
        if out and NEGATIVE_VALUE.match(token) and out[-1].startswith("--") and "=" not in out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available command."""
    parser = OneLineParser(
        prog="rfgraph",
        description="Theoretical and effective receptive fields of ONNX models.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rfgraph {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print results only: no progress bars or notes")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"rfgraph.commands.{name}")
        except ModuleNotFoundError as exc:  # a broken install: the command says so when run
            if exc.name and exc.name.startswith("rfgraph"):
                raise
            _register_missing(sub, name, exc.name or "?")
            continue
        module.register(sub)
    for command in sub.choices.values():  # --quiet is accepted after the command name too
        if not {"-q", "--quiet"} & set(command._option_string_actions):
            command.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                                 help="print results only: no progress bars or notes")
    return parser


def _register_missing(sub: argparse._SubParsersAction, name: str, module: str) -> None:
    """A command whose dependency is not installed stays listed, and running it prints one line
    with the install command (it was silently absent from the CLI before)."""
    def refuse(_args: argparse.Namespace) -> int:
        raise RFGraphError(f"the '{name}' command needs the Python package '{module}', which is not "
                           f"installed: pip install {module}")
    parser = sub.add_parser(name, help=f"(needs '{module}': not installed)", add_help=True)
    parser.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(func=refuse)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; user errors become one line on stderr and exit code 2, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(_attach_negative_values(sys.argv[1:] if argv is None else argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RFGraphError as exc:
        print(f"rfgraph: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rfgraph: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # a bug in rfgraph, not in the user's file: still no bare traceback
        if os.environ.get("RFGRAPH_DEBUG"):
            raise
        print(f"rfgraph: internal error ({type(exc).__name__}: {exc}); this is a bug in rfgraph, "
              f"please report it (set RFGRAPH_DEBUG=1 for the traceback)", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
