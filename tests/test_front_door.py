"""The README's commands are the ones CI and users run."""

from tests.helpers import ROOT


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci/run").read_text().strip().splitlines()[-1]
    readme = (ROOT / "README.md").read_text()
    assert ci in readme
    assert "pytest" in ci and ".venv" in ci


def test_every_package_says_its_plain_role():
    for pkg in ("leyline", "graph", "kasmina", "tamiyo", "simic", "cli"):
        first = (ROOT / "esper" / pkg / "__init__.py").read_text().splitlines()[0]
        assert first.startswith('"""') and len(first) > 20, pkg
