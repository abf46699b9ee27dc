"""The house plan holds: imports point one way between the layers (``_napari`` -> ``engine`` ->
``model``) and between the engine's subpackages, and no module of the package takes part in an
import cycle, counting imports inside functions (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import napari_sam_hq

PACKAGE = Path(napari_sam_hq.__file__).parent
NAME = "napari_sam_hq"

# The engine's subpackages, lowest first: each may import those before it, never those after.
ENGINE_ORDER = ("masks", "atomic", "prediction", "volumes", "automatic", "adaptation", "tracking", "annotation", "io")
MAX_ENGINE_MODULES = 8


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports, anywhere in the file (``from . import x``
    names the module ``x`` when it is one)."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    this = _module_name(path)
    package = this if path.name == "__init__.py" else this.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(NAME)}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith(NAME):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in modules else target)
    return {m for m in found if m in modules and m != this}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among modules (package ``__init__`` files excluded: importing a
    submodule runs its package's ``__init__``, which is not a dependency the submodule chose)."""
    edges = {m: {d for d in deps if not _is_package(d)} for m, deps in graph.items() if not _is_package(m)}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges.get(m, ())):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def test_no_import_cycle_in_the_package():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"napari_sam_hq.a": {"napari_sam_hq.b"}, "napari_sam_hq.b": {"napari_sam_hq.a"}}) == [
        "napari_sam_hq.a", "napari_sam_hq.b", "napari_sam_hq.a"]


def _engine_part(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "engine" else None  # a subpackage or a base module


def test_layers_point_down():
    """model imports nothing above it; the engine never imports ``_napari`` or the CLI."""
    bad = []
    for module, deps in _graph().items():
        for d in deps:
            if module.startswith(f"{NAME}.model") and not d.startswith((f"{NAME}.model", f"{NAME}._lazy")):
                bad.append((module, d))
            if module.startswith(f"{NAME}.engine") and d.startswith((f"{NAME}._napari", f"{NAME}.cli")):
                bad.append((module, d))
    assert not bad, bad


def test_engine_subpackages_import_downwards_only():
    bad = []
    for module, deps in _graph().items():
        part = _engine_part(module)
        if part is None:
            continue
        for d in deps:
            other = _engine_part(d)
            if other is None or other == part:
                continue
            if ENGINE_ORDER.index(other) > ENGINE_ORDER.index(part):
                bad.append(f"{module} imports {d}")
    assert not bad, "\n".join(bad)


def test_engine_is_grouped_by_idea():
    engine = PACKAGE / "engine"
    modules = sorted(p.name for p in engine.glob("*.py"))
    assert len(modules) <= MAX_ENGINE_MODULES, modules
    packages = sorted(p.parent.name for p in engine.glob("*/__init__.py"))
    assert set(packages) | {"masks", "atomic"} == set(ENGINE_ORDER), packages
    for name in packages:  # each says what it holds and what it may import
        doc = ast.get_docstring(ast.parse((engine / name / "__init__.py").read_text()))
        assert doc and "May import" in doc, name


def test_no_class_inherits_from_two_project_classes():
    """The dock is composed, not mixed in: each class has at most one parent from this project."""
    trees = {p: ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}
    ours = {n.name for tree in trees.values() for n in ast.walk(tree) if isinstance(n, ast.ClassDef)}
    bad = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                parents = [b.id if isinstance(b, ast.Name) else getattr(b, "attr", "") for b in node.bases]
                if sum(p in ours for p in parents) > 1:
                    bad.append(f"{path.name}:{node.name}({', '.join(parents)})")
    assert not bad, bad


def test_the_dock_stays_small_and_its_tools_are_panels():
    assert len((PACKAGE / "_napari" / "widget.py").read_text().splitlines()) <= 450
    tools = sorted(p.stem for p in (PACKAGE / "_napari" / "tools").glob("*.py") if p.stem != "__init__")
    assert tools == ["adapt", "everything", "measure", "propagate", "refine", "track"]
    for name in tools:  # a tool takes the ToolHost and reads nothing private of another class
        text = (PACKAGE / "_napari" / "tools" / f"{name}.py").read_text()
        assert "host: ToolHost" in text, name
        assert "host._" not in text and "widget import" not in text, name
