"""`esper report DIR`: PNG plots and report.md for a run directory of `esper grow` or `esper train`."""

from __future__ import annotations

from pathlib import Path

from esper.leyline import UsageError


def add_arguments(p) -> None:
    p.add_argument("dir", help="a directory written by `esper grow --out` or `esper train --out`")


def run(args) -> int:
    from esper.runs.report import make_report

    path = Path(args.dir)
    if not path.is_dir():
        raise UsageError(f"no such run directory: {path}")
    try:
        report = make_report(path)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from e
    pngs = sorted(p.name for p in path.glob("*.png"))
    print(f"esper report: wrote {report} with {', '.join(pngs)}")
    return 0
