"""Write docs/cli.md's reference half from esper's argparse parsers, so that every flag the
command line takes is documented, and documented as `--help` words it.

    .venv/bin/python tools/cli_doc.py           # rewrite docs/cli.md
    .venv/bin/python tools/cli_doc.py --check   # exit 1 if docs/cli.md differs from the parsers

docs/cli.md keeps its hand-written prose above the MARKER line; everything below it is
generated: a table of the commands, then each command's synopsis and a table of its
arguments and options (the help text of each, with its default when the help does not
say it). tests/test_cli_doc.py fails when the file is out of date.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI_MD = ROOT / "docs" / "cli.md"
COMMAND = ".venv/bin/python tools/cli_doc.py"
MARKER = f"<!-- Below this line: written by tools/cli_doc.py from esper's parsers. Change a flag in esper/cli/, then run `{COMMAND}`. -->"


class _Built(Exception):
    """Carries the parser esper.cli.main.main() built, out of main(), before it parses anything."""


def build_parser() -> argparse.ArgumentParser:
    """The `esper` parser with every command's subparser, exactly as esper.cli.main builds it:
    its build_parser() where it has one, else the parser main() makes, caught as main()
    calls parse_args on it (so nothing runs)."""
    from esper.cli import main as cli_main

    if hasattr(cli_main, "build_parser"):
        return cli_main.build_parser()

    def caught(self, *args, **kwargs):
        raise _Built(self)

    original = argparse.ArgumentParser.parse_args
    argparse.ArgumentParser.parse_args = caught
    try:
        cli_main.main([])
    except _Built as built:
        return built.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError("esper.cli.main.main() returned without parsing its arguments")


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _help(action: argparse.Action, prog: str) -> str:
    """The help text as `--help` prints it (with %(default)s and the like filled in)."""
    text = action.help or ""
    if text is argparse.SUPPRESS:
        return ""
    if "%" in text:
        params = {k: v for k, v in vars(action).items() if v is not argparse.SUPPRESS}
        params["prog"] = prog
        if params.get("choices") is not None:
            params["choices"] = ", ".join(str(c) for c in params["choices"])
        text = text % params
    default = action.default
    if default not in (None, False, argparse.SUPPRESS) and "default" not in text and not isinstance(action, argparse._HelpAction):
        text = f"{text} (default {default})" if text else f"default {default}"
    if action.required and action.option_strings:
        text = f"required; {text}" if text else "required"
    return _cell(text)


def _metavar(action: argparse.Action) -> str:
    if action.metavar is not None:
        return action.metavar if isinstance(action.metavar, str) else " ".join(action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _form(action: argparse.Action) -> str:
    """How the argument is written: `--out OUT`, `--download`, `--format {pt2,onnx}`, `model`."""
    if action.nargs == 0:
        return ", ".join(action.option_strings)
    m = _metavar(action)
    if action.nargs is None:
        value = m
    elif isinstance(action.nargs, int):
        value = " ".join([m] * action.nargs)
    else:
        value = {"?": f"[{m}]", "*": f"[{m} ...]", "+": f"{m} [{m} ...]"}.get(action.nargs, f"{m} ...")
    return ", ".join(f"{s} {value}" for s in action.option_strings) if action.option_strings else value


def _documented(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [
        a
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction)) and a.help is not argparse.SUPPRESS
    ]


def _synopsis(parser: argparse.ArgumentParser) -> str:
    actions = _documented(parser)
    required = [_form(a) for a in actions if a.option_strings and a.required]
    optional = any(a.option_strings and not a.required for a in actions)
    positional = [_form(a) for a in actions if not a.option_strings]
    return " ".join([parser.prog, *required, *(["[options]"] if optional else []), *positional])


def _arguments_table(parser: argparse.ArgumentParser) -> list[str]:
    actions = _documented(parser)
    if not actions:
        return []
    lines = ["| argument | what it does |", "|---|---|"]
    for a in actions:
        lines.append(f"| `{_cell(_form(a))}` | {_help(a, parser.prog)} |")
    return lines


def _commands(parser: argparse.ArgumentParser) -> dict[str, tuple[argparse.ArgumentParser, str]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            return {name: (sub, helps.get(name) or sub.description or "") for name, sub in action.choices.items()}
    return {}


def render(parser: argparse.ArgumentParser) -> str:
    """The generated half of docs/cli.md (everything below MARKER)."""
    commands = _commands(parser)
    lines = ["## Commands", "", "| command | what it does |", "|---|---|"]
    lines += [f"| [`{parser.prog} {name}`](#{parser.prog}-{name}) | {_cell(text)} |" for name, (_, text) in commands.items()]
    lines.append("")
    own = _arguments_table(parser)
    if own:
        lines += [f"Options of `{parser.prog}` itself, given before the command:", "", *own, ""]
    for name, (sub, text) in commands.items():
        said = _cell(sub.description or text)
        lines += [f"## {sub.prog}", "", f"{said[:1].upper()}{said[1:]}.", "", "```text", _synopsis(sub), "```", ""]
        lines += [*_arguments_table(sub), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def generate(current: str, parser: argparse.ArgumentParser | None = None) -> str:
    """docs/cli.md as it should read: `current`'s prose above MARKER, the parsers' reference below."""
    prose = current.split(MARKER, 1)[0].rstrip("\n") if MARKER in current else current.rstrip("\n")
    return f"{prose}\n\n{MARKER}\n\n{render(parser or build_parser())}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only say whether docs/cli.md is up to date (exit 1 if not)")
    args = ap.parse_args(argv)
    current = CLI_MD.read_text()
    wanted = generate(current)
    if wanted == current:
        print(f"{CLI_MD.relative_to(ROOT)} is up to date")
        return 0
    if args.check:
        print(f"{CLI_MD.relative_to(ROOT)} differs from esper's parsers: run `{COMMAND}`", file=sys.stderr)
        return 1
    CLI_MD.write_text(wanted)
    print(f"wrote {CLI_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
