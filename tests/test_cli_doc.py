"""The documentation stays in step with the code: docs/cli.md lists every flag the parsers
take, the test extra installs what the strict site build runs, and the API pages build
without broken links."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

from tests.helpers import ROOT


def _cli_doc():
    spec = importlib.util.spec_from_file_location("cli_doc", ROOT / "tools" / "cli_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_cli_md_is_what_the_parsers_say():
    cli_doc = _cli_doc()
    current = cli_doc.CLI_MD.read_text()
    assert cli_doc.generate(current) == current, f"docs/cli.md is out of date with esper's parsers: run `{cli_doc.COMMAND}`"


def test_the_generated_page_names_every_flag_of_every_command():
    cli_doc = _cli_doc()
    parser = cli_doc.build_parser()
    page = cli_doc.render(parser)
    for name, (sub, _) in [("", (parser, "")), *cli_doc._commands(parser).items()]:
        assert not name or f"## esper {name}" in page
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert re.search(rf"`{re.escape(flag)}\b", page), f"esper {name} {flag} is missing from the page"
    for flag in ("--limit", "--trust-host-code"):
        assert flag in page


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_the_test_extra_installs_what_ci_runs():
    """.ci/run runs the README's `-e '.[test]'` install, the tests, and a strict mkdocs
    build: the test extra holds the docs extra, so that build runs wherever the tests do."""
    extras = _extras()
    assert "mkdocs build" in (ROOT / ".ci" / "run").read_text()
    missing = sorted(set(extras["docs"]) - set(extras["test"]))
    assert not missing, f"the test extra lacks {missing}, which the strict site build (.ci/run) needs"


def test_the_site_builds_without_broken_links_from_docstrings(tmp_path):
    """fx graph dumps in docstrings (`%a = call_module[layer1](x)`) read as Markdown links
    unless they are fenced; mkdocs reports each as an unrecognized relative link."""
    pytest.importorskip("mkdocs", reason="the test extra installs mkdocs; reinstall with -e '.[test]'")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    broken = [line for line in output.splitlines() if "unrecognized relative link" in line]
    assert not broken, "\n".join(broken)
