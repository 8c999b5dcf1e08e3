"""The import direction of STYLE section 1: arrows point one way, and math and I/O never see Ray or Hydra.

Every import counts, at module level or inside a function: a lazy import is still a dependency.
"""

import ast
import graphlib
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
# The face model stack, lowest first: each package may import only the ones before it (and the shared
# utilities at the package root, render, records), never the pipeline, the config registry, the CLI or
# diffusion.
STACK = ("facemodel", "labels", "sources", "build", "fitting", "analysis")
NOT_FOR_THE_STACK = {"pipeline", "config", "cli", "diffusion"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module_name(p): p for p in SOURCES}


def _synth_imports(path: Path) -> set[str]:
    """The synth modules `path` imports, anywhere in it: `from synth.x import y` is module synth.x.y when
    that is a module, else synth.x."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names if alias.name.split(".")[0] == "synth")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "synth":
                continue
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if full in MODULES else node.module)
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; synth uses absolute imports")
    return {name for name in out if name in MODULES}


def _package(module: str) -> str:
    """synth.facemodel.model -> facemodel; synth.errors -> the root's shared utilities, ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and (PACKAGE / parts[1]).is_dir()) else ""


MODULE_GRAPH = {name: _synth_imports(path) for name, path in MODULES.items()}


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_framework_imports_stay_in_their_layer(path: Path) -> None:
    rel = path.relative_to(PACKAGE).as_posix()
    for framework in _imports(path) & FRAMEWORKS:
        assert rel.startswith(ALLOWED[framework]), f"{rel} imports {framework}; only {ALLOWED[framework]} may"


@pytest.mark.parametrize("package", STACK)
def test_the_model_stack_imports_only_downwards(package: str) -> None:
    level = STACK.index(package)
    for name, deps in MODULE_GRAPH.items():
        if _package(name) != package:
            continue
        for dep in deps:
            target = _package(dep)
            assert target not in NOT_FOR_THE_STACK, f"{name} imports {dep}: the stack never uses {target}"
            if target in STACK:
                assert STACK.index(target) <= level, (
                    f"{name} imports {dep}, a layer above it ({' <- '.join(STACK)}); move the code down"
                )


def test_no_package_imports_one_that_imports_it_back() -> None:
    graph: dict[str, set[str]] = {}
    for name, deps in MODULE_GRAPH.items():
        mine = _package(name)
        graph.setdefault(mine, set()).update(_package(d) for d in deps if _package(d) != mine)
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as err:
        pytest.fail(f"packages import each other in a circle: {' -> '.join(err.args[1])}")
    assert order.index("facemodel") < order.index("build") < order.index("analysis")


@pytest.mark.parametrize("package", STACK)
def test_no_module_imports_one_that_imports_it_back(package: str) -> None:
    """Within each package of the model stack (synth/facemodel/ first), module imports form no circle."""
    graph = {
        name: {d for d in deps if _package(d) == package}
        for name, deps in MODULE_GRAPH.items()
        if _package(name) == package
    }
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as err:
        pytest.fail(f"modules import each other in a circle: {' -> '.join(err.args[1])}")


def test_the_cycle_checks_see_imports_inside_functions(tmp_path: Path) -> None:
    # the checks above rest on _synth_imports seeing lazy imports; a function-level import must count
    path = tmp_path / "lazy.py"
    path.write_text("def f():\n    from synth.build.build import resolve_model\n    import synth.errors\n")
    assert _synth_imports(path) == {"synth.build.build", "synth.errors"}
    assert _package("synth.build.build") == "build" and _package("synth.errors") == ""


def test_the_package_has_sources() -> None:
    assert len(SOURCES) > 5 and {"synth.facemodel.model", "synth.build.build"} <= set(MODULE_GRAPH)
