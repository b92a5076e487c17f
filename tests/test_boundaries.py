"""The job runs in the GPU container, where the launchers are not installed (Kaggle and the SageMaker DLC path ship
job/ alone): no module under job/ imports launch, at any depth of the module (inside functions too)."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

JOB_MODULES = sorted((REPO / "job").rglob("*.py"))


def imported_modules(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_the_scan_sees_imports_inside_functions():
    source = "def f():\n    from launch import catalog\n    import launch.cli as c\n"
    assert imported_modules(source) == {"launch", "launch.cli"}


@pytest.mark.parametrize("path", JOB_MODULES, ids=lambda p: str(p.relative_to(REPO)))
def test_job_imports_nothing_from_launch(path):
    bad = {m for m in imported_modules(path.read_text(encoding="utf-8")) if m == "launch" or m.startswith("launch.")}
    assert not bad, f"{path.relative_to(REPO)} imports {', '.join(sorted(bad))}"
