"""The README's commands are the ones CI and users run."""

import json
import re
import shlex
import subprocess
import sys

import esper
from esper.runs.metrics import read_jsonl
from tests.helpers import ROOT


def test_ci_runs_the_readme_test_command():
    tests = [line for line in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in line]
    readme = (ROOT / "README.md").read_text()
    assert len(tests) == 1 and tests[0] in readme
    assert ".venv" in tests[0]


def _quick_start_grow():
    """The `esper grow ...` of the README's quick start, as an argument list after `esper`."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Quick start")
    block = re.search(r"```bash\n(.*?)```", readme[start:], re.S).group(1)
    for command in block.split("&&"):
        words = shlex.split(command)
        if words[0].endswith("esper") and words[1] == "grow":
            return words[1:]
    raise AssertionError("the quick start has no `esper grow` command")


def test_the_quick_start_grow_writes_its_run(tmp_path):
    args = _quick_start_grow()
    args[args.index("--out") + 1] = str(tmp_path / "demo")
    # The README's run, shortened: later options win, so the user's command is kept whole.
    args += ["--epochs", "2", "--limit", "96", "--batch-size", "32", "--no-progress"]
    r = subprocess.run([sys.executable, "-m", "esper", *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "demo"
    for name in ("metrics.jsonl", "edits.yaml", "summary.json", "report.md", "accuracy.png"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["policy"] == "heuristic" and "baseline" in summary  # --baseline is in the quick start
    assert {r["run"] for r in read_jsonl(out / "metrics.jsonl")} == {"grown", "baseline"}
    model = esper.load(out / "model", trust_host_code=True)
    assert model.plane.ticks == 2 and type(model.host).__name__ == "HostCNN"


def test_every_package_says_its_plain_role():
    for pkg in ("leyline", "graph", "kasmina", "tamiyo", "simic", "integrations", "cli"):
        first = (ROOT / "esper" / pkg / "__init__.py").read_text().splitlines()[0]
        assert first.startswith('"""') and len(first) > 20, pkg
