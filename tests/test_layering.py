"""Imports point down the architecture table only."""

import ast

import pytest

from tests.helpers import ROOT

ALLOWED = {
    "leyline": set(),
    "graph": {"leyline"},
    "kernels": set(),
    "kasmina": {"leyline", "graph", "kernels"},
    "tamiyo": {"leyline"},
    "simic": {"leyline", "kasmina", "tamiyo"},
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
            if parts[0] == "esper" and len(parts) > 1 and parts[1] in ALLOWED:
                yield parts[1]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_it_may(package):
    folder = ROOT / ("kernels" if package == "kernels" else f"esper/{package}")
    for path in folder.glob("*.py"):
        used = set(_esper_imports(path)) - {package}
        assert used <= ALLOWED[package], f"{path.relative_to(ROOT)} imports {sorted(used - ALLOWED[package])}"
