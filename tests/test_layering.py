"""Imports point down the architecture table only."""

import ast
import subprocess
import sys

import pytest

from tests.helpers import ROOT

ALLOWED = {
    "leyline": set(),
    "graph": {"leyline"},
    "kernels": set(),
    "kasmina": {"leyline", "graph", "kernels"},
    "tamiyo": {"leyline"},
    "runs": {"leyline", "kasmina"},  # kasmina.checkpoint: a grow run saves its model
    "data": {"leyline", "runs"},  # runs.files and runs.metrics.progress_bar only: dataset caches are written with its atomic save
    "simic": {"leyline", "graph", "kasmina", "tamiyo", "data", "runs"},
    "integrations": {"leyline", "kasmina", "tamiyo", "data", "runs", "simic"},  # only esper/__init__ (lazily) and cli import it
    "cli": {"leyline", "graph", "kernels", "kasmina", "tamiyo", "data", "runs", "simic", "integrations"},
}


def _esper_imports(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "esper" and len(parts) > 1:
                yield parts[1]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package):
    folder = ROOT / "esper" / package
    for path in folder.glob("*.py"):
        used = set(_esper_imports(path)) - {package}
        assert used <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {sorted(used - ALLOWED[package])}"


def test_integrations_load_only_when_used():
    """`import esper` leaves the integrations (and so simic) alone; `esper.Gardener` loads
    them; neither brings in the HuggingFace or Lightning trainers."""
    code = (
        "import sys, esper\n"
        "assert 'esper.integrations' not in sys.modules and 'esper.simic' not in sys.modules\n"
        "from esper.integrations.gardener import Gardener\n"
        "assert esper.Gardener is Gardener\n"
        "assert not {'transformers', 'lightning'} & set(sys.modules), sorted({'transformers', 'lightning'} & set(sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr


BUILT_IN_POLICIES = {"HeuristicPolicy", "RandomPolicy", "WaitPolicy"}


@pytest.mark.parametrize("folder", ["esper", "tools"])
def test_named_policies_are_built_by_the_registry(folder):
    """A policy's name means one policy everywhere: outside esper/tamiyo, code builds the
    built-in policies with esper.tamiyo.build_policy, never by calling their classes."""
    for path in (ROOT / folder).rglob("*.py"):
        if path.parent.name == "tamiyo":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) in BUILT_IN_POLICIES:
                raise AssertionError(f"{path.relative_to(ROOT)}:{node.lineno} builds a policy by hand: use build_policy")
