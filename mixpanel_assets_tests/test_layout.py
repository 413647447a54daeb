"""The package's shape, held by tests: data travels one way, and the tree shows the architecture.

DESIGN.md, "Layout": source -> transform -> staging -> destinations -> Dagster wiring, a lower
layer never importing a higher one, small modules, no C of our own. These rules erode one
convenient import at a time, so they are checked on the source text, not left to review.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mixpanel_assets"

# Lowest first. A module may import its own layer and the layers before it, never one after it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("windows", "schema")),
    ("source", ("mixpanel",)),
    ("transform", ("transform",)),
    ("staging", ("staging",)),
    ("destinations", ("destinations",)),
    ("configuration", ("config", "config_checks")),
    ("dagster wiring", ("defs",)),
    ("entry points", ("definitions", "cli", "component", "dg_defs")),
]
MAX_LINES = 400
LONG_MODULE_MARK = "Over ~400 lines because"  # a longer module says why in its docstring, after this


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _layer(module: str) -> int | None:
    top = module.split(".")[1] if module.count(".") else ""
    for rank, (_, members) in enumerate(LAYERS):
        if top in members:
            return rank
    return None


def _imports(path: Path) -> set[str]:
    """Every mixpanel_assets module the file imports, at module level or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("mixpanel_assets"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mixpanel_assets"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        targets = {_resolve(n, modules) for n in _imports(path)}
        graph[module] = {t for t in targets if t and t != module and t != "mixpanel_assets"}
    return graph


def test_every_module_belongs_to_a_layer():
    unplaced = [m for m in _modules() if m != "mixpanel_assets" and _layer(m) is None]
    assert not unplaced, f"modules outside every layer of LAYERS (place them in a subpackage): {unplaced}"


def test_no_layer_imports_a_higher_one():
    upward = []
    for module, targets in _graph().items():
        for target in targets:
            mine, theirs = _layer(module), _layer(target)
            if None not in (mine, theirs) and theirs > mine:
                upward.append(f"{module} ({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]})")
    assert not upward, "imports that run back up the layers:\n  " + "\n  ".join(sorted(upward))


def test_no_import_cycles():
    graph = _graph()
    cycles = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(stack[stack.index(target):] + [module, target]) if target in stack
                              else f"{module} -> {target}")
            elif target not in state:
                visit(target, stack + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_modules_are_small_or_say_why_not():
    long = []
    for module, path in _modules().items():
        lines = path.read_text().count("\n")
        if lines > MAX_LINES and LONG_MODULE_MARK not in (ast.get_docstring(ast.parse(path.read_text())) or ""):
            long.append(f"{module}: {lines} lines")
    assert not long, f"modules over {MAX_LINES} lines without '{LONG_MODULE_MARK} <reason>' in their docstring: {long}"


def test_no_c_of_our_own_and_no_memory_mapped_inputs():
    compiled = [str(p.relative_to(PACKAGE)) for p in PACKAGE.rglob("*") if p.suffix in {".c", ".h", ".pyx", ".so"}]
    assert not compiled, f"compiled sources or builds in the package: {compiled}"
    assert not (PACKAGE / "vendor").exists(), "a vendor/ folder in the package"
    mapped = [m for m, p in _modules().items() if "mmap" in {a.split(".")[0] for a in _stdlib_imports(p)}]
    assert not mapped, f"modules that memory-map files (a file truncated while read kills the reader): {mapped}"


def _stdlib_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names
