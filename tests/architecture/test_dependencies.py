"""The packages depend on each other one way (docs/architecture.md#packages-and-their-imports).

Every ``import reidscale.X...`` in the package, at module level or inside a function (a lazy import is a
dependency too), is an edge from the importing subpackage to X; the graph of subpackages must have no
cycle. And importing the evaluation or the kernels package must not load jobs or objectives.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "reidscale"


def _unit(module: str) -> str:
    """``reidscale.a.b`` → ``a`` (the subpackage or top-level module it belongs to)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> set[str]:
    """Absolute reidscale modules imported anywhere in ``path`` (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    package = package.removesuffix(".__init__")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("reidscale"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            if name.startswith("reidscale"):
                found.add(name)
    return found


def dependency_graph() -> dict[str, set[str]]:
    """Subpackage → the other subpackages it imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = _unit(".".join(path.relative_to(ROOT).with_suffix("").parts))
        for module in _imports(path):
            target = _unit(module)
            if target != source and target != "reidscale":
                graph[source].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that starts and ends at the same node, or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_cycle_finder_finds_a_cycle_and_accepts_a_chain() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_subpackages() -> None:
    graph = dependency_graph()
    assert {"config", "data", "engine", "evaluation", "jobs", "kernels", "methods"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph) or [])}"


def test_the_config_package_knows_no_section() -> None:
    assert dependency_graph()["config"] <= {"utils"}


@pytest.mark.parametrize(
    "package", ["reidscale.evaluation", "reidscale.kernels", "reidscale.data", "reidscale.neighbours"]
)
def test_importing_a_lower_package_loads_no_jobs_methods_or_objectives(package: str) -> None:
    """Every module of ``package`` imported (a module whose optional third-party dependency is missing,
    e.g. DALI, is skipped), then the reidscale subpackages in ``sys.modules`` listed."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"root = importlib.import_module({package!r})\n"
        "for info in pkgutil.walk_packages(root.__path__, root.__name__ + '.'):\n"
        "    try:\n"
        "        importlib.import_module(info.name)\n"
        "    except ImportError as err:\n"
        "        if (err.name or '').startswith('reidscale'):\n"
        "            raise\n"
        "names = {name.split('.')[1] for name in sys.modules if name.startswith('reidscale.')}\n"
        "print(json.dumps(sorted(names)))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert not loaded & {"jobs", "methods", "objectives", "engine", "cli"}, loaded


def documented_graph() -> list[tuple[str, set[str]]]:
    """The table of docs/architecture.md#packages-and-their-imports: (package, its imports), in order."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text[text.index("### Packages and their imports") :]
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0].startswith("`"):
            imports = {name.strip(" `") for name in cells[1].split(",") if name.strip(" `—")}
            rows.append((cells[0].strip("`"), imports))
    return rows


def test_the_documented_table_is_the_import_graph_and_runs_downwards() -> None:
    rows = documented_graph()
    graph = {name: deps for name, deps in dependency_graph().items() if name != "__main__"}
    assert {name: deps for name, deps in rows if deps} == graph
    order = [name for name, _ in rows]
    assert set(order) >= set(graph) | {dep for deps in graph.values() for dep in deps}
    for position, (name, deps) in enumerate(rows):
        assert all(order.index(dep) > position for dep in deps), f"{name} imports a package above it"
