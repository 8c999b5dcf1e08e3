"""The import direction of STYLE section 1: math and I/O never see Ray or Hydra."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "synth"
FRAMEWORKS = {"ray", "hydra", "omegaconf"}
# Only these may import Ray / Hydra: the CLI, the config registry, and the one module that wires Ray Data.
ALLOWED = {
    "ray": ("cli/", "pipeline/ray_exec.py"),
    "hydra": ("cli/", "config/"),
    "omegaconf": ("cli/", "config/"),
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_framework_imports_stay_in_their_layer(path: Path) -> None:
    rel = path.relative_to(PACKAGE).as_posix()
    for framework in _imports(path) & FRAMEWORKS:
        assert rel.startswith(ALLOWED[framework]), f"{rel} imports {framework}; only {ALLOWED[framework]} may"


def test_the_package_has_sources() -> None:
    assert len(SOURCES) > 5
