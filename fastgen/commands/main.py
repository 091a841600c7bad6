"""The `fastgen` command line: one module per subcommand, loaded only when it is chosen.

`COMMANDS` maps each subcommand to its one-line help and its module; a module has
`add_arguments(parser)` and `run(args) -> exit code`. `fastgen --help` imports none of them, so
it answers without loading torch; `fastgen classify --help` loads only `classify`'s options.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

COMMANDS: dict[str, tuple[str, str]] = {
    "classify": ("classify image files into a JSON-lines file", "fastgen.commands.classify"),
    "demo": (
        "classify held-out digits (builtin:digits) or numbers (--model builtin:numbers), beside a baseline",
        "fastgen.commands.demo",
    ),
    "bench": ("fastgen beside the reference-style loop; utilisation; policies", "fastgen.commands.bench"),
    "env": ("versions and devices", "fastgen.commands.env"),
    "export": ("export the denoiser to ONNX or a TensorRT engine (cached)", "fastgen.commands.export"),
    "calibrate": ("fit calibrated probabilities on labelled results", "fastgen.commands.calibrate"),
    "report": ("an HTML report with plots of a results file", "fastgen.commands.report"),
    "eval": ("measure a property of a model: shape bias on cue-conflict images", "fastgen.commands.eval"),
    "selftest": ("check every execution path this machine has against the fp32 reference", "fastgen.commands.selftest"),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """Reports a usage error as one line, `fastgen classify: error: ...`, with exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(chosen: str | None = None) -> OneLineErrorParser:
    """The parser; only the `chosen` subcommand's module is imported and its options added."""
    parser = OneLineErrorParser(prog="fastgen", description="Generative classification with diffusion models")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    for name, (summary, module_name) in COMMANDS.items():
        command = sub.add_parser(name, help=summary, description=summary)
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_arguments(command)
            command.set_defaults(func=module.run)
    return parser


def _chosen_command(argv: Sequence[str]) -> str | None:
    return next((arg for arg in argv if arg in COMMANDS), None)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_chosen_command(argv)).parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as error:
        print(f"fastgen {args.command}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # a disk that fills up or goes away mid-run: one line, not a traceback
        print(f"fastgen {args.command}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as interrupt:
        # Every finished image is already a synced line; the file ends after the last of them.
        out = getattr(args, "out", None)
        where = f"finished images are saved in {out}; " if out else ""
        print(f"fastgen {args.command}: interrupted; {where}run the same command again to resume", file=sys.stderr)
        # 128 + the signal, as a shell reports it: 130 for Ctrl-C (SIGINT), 143 for SIGTERM,
        # which `fastgen.jobs.distributed.sigterm_as_interrupt` raises as a KeyboardInterrupt
        # carrying its `signum`.
        return 128 + int(getattr(interrupt, "signum", signal.SIGINT))


if __name__ == "__main__":
    sys.exit(main())
