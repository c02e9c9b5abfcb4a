"""The import graph says what the architecture is (docs/architecture.md): layers, arrows pointing down.

Every ``import`` of an agentrl module is counted, including those inside functions and under
``TYPE_CHECKING``: a lazy import is still a dependency a reader has to follow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "agentrl"

# Lower layers may not import higher ones. Same rank: no imports between them (they are independent).
LAYERS = {
    "types": 0,
    "errors": 0,
    "models": 1,
    "config_io": 1,
    "tools": 1,
    "envs": 2,
    "engines": 3,
    "rollout": 4,
    "trainer": 4,
    "run": 5,
    "eval": 6,
    "cli": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The agentrl modules ``path`` imports (``from a.b import c`` counts ``a.b.c`` when that is a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    this = module_name(path)
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = this.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "agentrl" and name in modules and name != this:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {m: imported_modules(p, modules) for m, p in files.items()}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_graph_is_read_from_real_imports() -> None:
    edges = graph()
    # Known edges: if the parser missed them, the checks below would pass on an empty graph.
    assert "agentrl.engines.base" in edges["agentrl.rollout.controller"]
    assert "agentrl.trainer.losses" in edges["agentrl.trainer.torch_backend"]
    assert "agentrl.run.loop" in edges["agentrl.cli.train"]
    assert len(edges) > 80


def test_no_cycle_between_modules() -> None:
    edges = {m: {d for d in deps if not m.startswith(d + ".")} for m, deps in graph().items()}
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges) or [])}"


def test_no_cycle_between_packages_and_layers_point_down() -> None:
    wrong = []
    for module, deps in graph().items():
        src = layer(module)
        if src is None or src == "__main__":
            continue
        assert src in LAYERS, f"{module}: add its package to LAYERS (and to docs/architecture.md)"
        for dep in deps:
            dst = layer(dep)
            if dst is None or dst == src:
                continue
            if LAYERS[dst] >= LAYERS[src]:
                wrong.append(f"{module} imports {dep} ({src} is layer {LAYERS[src]}, {dst} {LAYERS[dst]})")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("forbidden", ["engines", "rollout", "run", "eval", "cli"])
def test_trainer_imports_no_engine_rollout_run_or_cli_code(forbidden: str) -> None:
    offenders = [
        f"{m} -> {d}"
        for m, deps in graph().items()
        if layer(m) == "trainer"
        for d in deps
        if layer(d) == forbidden
    ]
    assert not offenders, offenders


def test_only_the_entry_points_import_the_cli() -> None:
    offenders = [
        f"{m} -> {d}"
        for m, deps in graph().items()
        if layer(m) not in ("cli", "__main__")
        for d in deps
        if layer(d) == "cli"
    ]
    assert not offenders, offenders
