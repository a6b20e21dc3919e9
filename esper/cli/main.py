"""`esper COMMAND ...`: dispatch to one module per command."""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

import esper
from esper.leyline import EsperError

# The module, not the function esper.graph re-exports under the same name.
tracing = importlib.import_module("esper.graph.trace")

COMMANDS = {
    "instrument": "place seed slots in a model file and print the slot table",
    "export": "export a checkpoint's fossilized model for deployment (pt2 or onnx)",
    "train": "train Tamiyo (PPO) to grow hosts",
    "grow": "grow one host with a policy",
    "report": "plots and a Markdown summary of a run directory",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="esper", description="Grow neural networks while they train.")
    parser.add_argument("--version", action="version", version=f"esper {esper.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"esper.cli.{name}")
        command = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command)
        command.add_argument(
            "--verbose", action="store_true", help="let torch's own output through (e.g. torch.export's graph dump when tracing fails)"
        )
        modules[name] = module
    args = parser.parse_args(argv)
    verbose = tracing.VERBOSE
    tracing.VERBOSE = args.verbose
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _say(args.command, warnings.showwarning)
            return modules[args.command].run(args) or 0
    except EsperError as e:  # esper's own errors are about what the user gave it
        text = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"esper {args.command}: error: {text}", file=sys.stderr)
        return 2
    finally:
        tracing.VERBOSE = verbose


def _say(command: str, show):
    """esper's own warnings speak to the user in one line, like its errors; others as Python shows them."""
    from esper.simic.loop import ShortRunWarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ShortRunWarning):
            print(f"esper {command}: warning: {message}", file=file or sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    return showwarning
