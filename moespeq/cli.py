"""The one `moespeq` entry point: a verb per user job, each in its own module under moespeq.commands.

Each command module defines `HELP`, `add_arguments(parser)` and `run(args) -> int`, and imports heavy
libraries (torch, cupy, transformers) only inside `run`, so `moespeq --help` stays fast and light.
A `UserError` anywhere becomes one line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from moespeq import __version__
from moespeq.errors import UserError

#: verb -> module under moespeq.commands (several verbs may share one module)
COMMANDS: dict[str, str] = {
    "models": "models",
    "hardware": "hardware",
    "budget": "budget",
    "inspect": "inspect",
    "export": "export",
    "synth": "synth",
    "systems": "systems",
    "simulate": "simulate",
    "roofline": "roofline",
    "search": "search",
    "tiny": "tiny",
    "collect": "collect",
    "import": "import_trace",
    "calibrate": "calibrate",
    "bench": "bench",
    "decode": "decode",
    "figures": "figures",
    "report": "report",
}


def _available_commands() -> dict[str, object]:
    """Command modules that exist in this build (verbs still being written are left out of --help)."""
    modules = {}
    for verb, module_name in COMMANDS.items():
        try:
            modules[verb] = importlib.import_module(f"moespeq.commands.{module_name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"moespeq.commands.{module_name}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moespeq",
        description="Offloaded MoE inference with speculative quantized decoding: traces, simulation, real decoding.",
    )
    parser.add_argument("--version", action="version", version=f"moespeq {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress and decisions to stderr")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb, module in _available_commands().items():
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.verb is None:
        parser.print_help()
        return 0
    try:
        return int(args.run(args) or 0)
    except UserError as exc:
        print(f"moespeq {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"moespeq {args.verb}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
