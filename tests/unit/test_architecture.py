"""The layout's rules (DESIGN.md §1–2), checked on the source: who may import whom, and no cycles."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# The packages whose import graph must stay acyclic; `atelier` (the CLI) sits above them all.
LAYERED_PACKAGES = ("control_plane", "inference", "transport")


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in LAYERED_PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
        if "__pycache__" not in path.parts
    }


def _is_type_checking_block(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements run when the module is imported: module level, inside if/try, not under TYPE_CHECKING
    and not in function bodies (an import inside a function runs when it is called, after start-up)."""
    for node in body:
        if _is_type_checking_block(node):
            continue
        yield node
        if isinstance(node, ast.If | ast.Try):
            for block in (
                node.body,
                node.orelse,
                getattr(node, "finalbody", []),
                *(h.body for h in getattr(node, "handlers", [])),
            ):
                yield from _import_time_statements(block)


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of `known` that `module` imports when it is imported."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in _import_time_statements(ast.parse(path.read_text()).body):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {name for name in found if name in known and name != module}


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that returns to its start, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for successor in sorted(graph[node]):
            if state.get(successor) == 1:
                return [*path[path.index(successor) :], successor]
            if successor not in state and (cycle := visit(successor)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_import_graph_of_the_server_packages_has_no_cycle() -> None:
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " → ".join(cycle or [])


def test_the_cycle_finder_reports_a_cycle() -> None:
    # The check above can only fail if the finder finds cycles: show it on a small graph.
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _find_cycle(graph) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", ["control_plane", "inference", "transport"])
def test_server_packages_never_import_the_cli(package: str) -> None:
    # Anywhere, function bodies included: the CLI is the top layer, never a dependency.
    modules = _modules()
    offenders = []
    for name, path in modules.items():
        if not name.startswith(package):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            targets = (
                [alias.name for alias in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            offenders += [f"{name} imports {target}" for target in targets if target.split(".")[0] == "atelier"]
    assert any(name.startswith(package) for name in modules)
    assert offenders == []


@pytest.mark.parametrize(
    ("importer", "forbidden"),
    [
        ("control_plane", "inference"),
        ("inference", "control_plane"),
        ("transport", "control_plane"),
        ("transport", "inference"),
    ],
)
def test_the_two_sides_never_import_each_other(importer: str, forbidden: str) -> None:
    graph = _import_graph()
    edges = [f"{a} → {b}" for a, targets in graph.items() if a.startswith(importer) for b in targets]
    assert [edge for edge in edges if edge.split(" → ")[1].startswith(forbidden + ".")] == []


def test_importing_the_gateway_loads_neither_torch_nor_diffusers() -> None:
    # The Gateway runs on CPU nodes: validation, routing and result types must not drag torch in.
    program = (
        "import sys, inference.deployments.gateway;"
        "print(','.join(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""


def test_the_control_plane_loads_neither_ray_torch_nor_inference() -> None:
    # DESIGN.md §1: the control plane runs where neither Ray nor torch is installed.
    program = (
        "import sys, control_plane.entrypoints.server, control_plane.entrypoints.main, control_plane.db;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'inference', 'diffusers'));"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip() == ""
