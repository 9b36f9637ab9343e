"""The architecture's rules, checked on the source: dependencies point downward, and no code outside
interpreters/ asks for an interpreter by its name."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "idls"

#: package -> packages it must never import (anything above it)
FORBIDDEN = {
    "errors": {"attacks", "interpreters", "models", "experiments", "report", "reproduce", "analysis", "cli", "defenses"},
    "progress": {"attacks", "interpreters", "models", "experiments", "report", "reproduce", "analysis", "cli",
                 "defenses", "core", "optim", "system"},
    "registry": {"attacks", "interpreters", "models", "experiments", "report", "reproduce", "analysis", "cli"},
    "core": {"attacks", "interpreters", "models", "experiments", "report", "reproduce", "analysis", "cli", "defenses"},
    "transforms": {"attacks", "interpreters", "models", "experiments", "report", "reproduce", "analysis", "cli",
                   "defenses"},
    "optim": {"attacks", "interpreters", "models", "experiments", "report", "reproduce", "analysis", "cli", "defenses"},
    "system": {"attacks", "interpreters", "models", "experiments", "report", "reproduce", "analysis", "cli"},
    "models": {"attacks", "interpreters", "experiments", "report", "reproduce", "analysis", "cli", "defenses"},
    "interpreters": {"attacks", "experiments", "report", "reproduce", "analysis", "cli", "defenses"},
    "attacks": {"experiments", "report", "reproduce", "analysis", "cli", "defenses"},
    "defenses": {"experiments", "report", "reproduce", "analysis", "cli"},
    "experiments": {"report", "reproduce", "cli"},
    "analysis": {"report", "reproduce", "cli"},
    "report": {"reproduce", "cli"},
    "reproduce": {"cli"},
}


def imported_packages(path: Path) -> set[str]:
    """First component below ``idls`` of every module the file imports (at any depth in the file)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "idls" and len(parts) > 1:
                found.add(parts[1])
    return found


def package_of(path: Path) -> str:
    relative = path.relative_to(SRC).with_suffix("")
    return relative.parts[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_downward(package):
    files = [p for p in SRC.rglob("*.py") if package_of(p) == package]
    assert files, f"no module of {package}"
    for path in files:
        upward = imported_packages(path) & FORBIDDEN[package]
        assert not upward, f"{path.relative_to(SRC)} imports {sorted(upward)}, above {package}"


NAMES = "grad|ig|cam|gradcam|rts|mask"
NAME_COMPARISON = re.compile(rf"""(==|!=)\s*['"]({NAMES})['"]|['"]({NAMES})['"]\s*(==|!=)""")


def test_no_interpreter_name_dispatch_outside_interpreters():
    offenders = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if package_of(p) != "interpreters"
                 for i, line in enumerate(p.read_text().splitlines(), 1) if NAME_COMPARISON.search(line)]
    assert not offenders, f"interpreter names compared outside interpreters/: {offenders}"
