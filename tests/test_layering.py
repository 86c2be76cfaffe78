"""ARCHITECTURE.md rule 1, checked on the source: app/, training/ and scoring/ never import each other; contract/ imports none."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "contract": {"app", "training", "scoring", "bench", "tests"},
    "app": {"training", "scoring"},
    "training": {"app", "scoring"},
    "scoring": {"app", "training"},
}


def imported_packages(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_respect_the_layering(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    if not files:
        pytest.skip(f"{package}/ has no Python files")
    bad = {f"{f.relative_to(ROOT)} imports {p}" for f in files for p in imported_packages(f) & FORBIDDEN[package]}
    assert not bad, sorted(bad)
