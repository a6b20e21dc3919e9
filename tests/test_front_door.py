"""The README's commands are the ones CI and users run."""

from tests.helpers import ROOT


def test_ci_runs_the_readme_test_command():
    tests = [line for line in (ROOT / ".ci/run").read_text().splitlines() if "pytest" in line]
    readme = (ROOT / "README.md").read_text()
    assert len(tests) == 1 and tests[0] in readme
    assert ".venv" in tests[0]


def test_every_package_says_its_plain_role():
    for pkg in ("leyline", "graph", "kasmina", "tamiyo", "simic", "integrations", "cli"):
        first = (ROOT / "esper" / pkg / "__init__.py").read_text().splitlines()[0]
        assert first.startswith('"""') and len(first) > 20, pkg
