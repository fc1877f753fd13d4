"""The ``taviseg`` command line: one sub-command per module in :mod:`taviseg.commands`.

Each command module exposes ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int``; heavy imports (torch, pydicom...) happen inside ``run`` so that
``taviseg --help`` stays fast. This is the only place that turns domain errors into exit codes.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from tavicore import __version__
from tavicore.errors import TavisegError

logger = logging.getLogger(__name__)

#: Sub-commands in pipeline order: name -> module under taviseg.commands.
COMMANDS: dict[str, str] = {
    "phantom": "phantom",
    "dataset": "dataset",
    "model": "model",
    "predict": "predict",
    "qc": "qc",
    "serve": "serve",
    "status": "status",
    "requeue": "requeue",
    "train": "train",
    "tune": "tune",
    "evaluate": "evaluate",
    "report": "report",
    "demo": "demo",
}

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _available_commands() -> dict[str, object]:
    modules = {}
    for name, module in COMMANDS.items():
        try:
            modules[name] = importlib.import_module(f"taviseg.commands.{module}")
        except ModuleNotFoundError as exc:
            if exc.name != f"taviseg.commands.{module}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="taviseg",
        description=(
            "Aortic-root segmentation for TAVI angiography: synthetic phantom and data sets, "
            "model zoo and inference, a DICOM node returning SEG to the PACS, and the "
            "benchmark's train/tune/evaluate/report pipeline."
        ),
    )
    parser.add_argument("--version", action="version", version=f"taviseg {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _available_commands().items():
        p = sub.add_parser(name, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP))
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    """Configure root logging for the command line (the only place handlers are set)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if verbose < 2:
        for noisy in ("pynetdicom", "PIL", "matplotlib", "urllib3"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``taviseg`` console script; returns the process exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return EXIT_USAGE
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args._run(args) or EXIT_OK)
    except TavisegError as exc:
        print(f"taviseg {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"taviseg {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
