"""The layout is the architecture: imports run one way (cli -> study -> spec -> store, cli -> ops -> store),
dlnn_core never imports the service or Optuna, and the service's modules import no cycle.

Every import counts, those inside functions too: an import deferred to a function is still a dependency
(and the usual way a cycle hides)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE = "dlnn_studies"

# subpackage of dlnn_studies -> the subpackages it must not import
FORBIDDEN = {
    "study": ("cli", "ops"),
    "spec": ("study", "cli", "ops"),
    "store": ("spec", "study", "cli", "ops"),
    "ops": ("cli", "study", "spec"),
}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every dotted name the module `name` imports, anywhere in its source, made absolute. `from a import b`
    gives both `a` and `a.b` (b may be a module)."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def import_graph(folders: tuple[str, ...] = (SERVICE, "dlnn_core"), root: Path = REPO) -> dict[str, set[str]]:
    """{module: every name it imports}, over the .py files under `folders`."""
    graph = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            name = module_name(path, root)
            graph[name] = imported_names(path.read_text(), name, path.name == "__init__.py")
    return graph


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, names in sorted(graph.items()):
        parts = module.split(".")
        for imported in sorted(names):
            top = imported.split(".")[0]
            if parts[0] == "dlnn_core" and (top == SERVICE or top == "optuna" or top.startswith("optuna_")):
                problems.append(f"{module} imports {imported}: dlnn_core knows nothing of the service or Optuna")
            if parts[0] != SERVICE or len(parts) < 3 or top != SERVICE:
                continue
            target = imported.split(".")
            if len(target) > 1 and target[1] in FORBIDDEN.get(parts[1], ()):
                problems.append(f"{module} imports {imported}: {parts[1]}/ must not import {target[1]}/")
    return problems


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles among the modules of `graph` (strongly connected components of two or more
    modules, or a module importing itself), each sorted."""
    edges = {m: sorted(n for n in names if n in graph) for m, names in graph.items()}
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges[v]:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def test_the_graph_is_read():
    graph = import_graph()
    assert f"{SERVICE}.study.worker" in graph and "dlnn_core.train" in graph
    assert f"{SERVICE}.store.storage" in graph[f"{SERVICE}.study.worker"]  # from ..store.storage import ...
    assert f"{SERVICE}.store.datasets" in graph[f"{SERVICE}.study.worker"]  # from ..store import datasets (in a function)
    assert f"{SERVICE}.cli.ops" in graph[f"{SERVICE}.cli.main"]  # from . import ops, study, train


def test_imports_run_one_way():
    assert layer_violations(import_graph()) == []


def test_the_service_modules_import_no_cycle():
    assert cycles(import_graph((SERVICE,))) == []


def test_the_checks_catch_what_they_are_for():
    graph = {"dlnn_core.train": {"optuna"}, "dlnn_core.models": {"dlnn_studies.errors"},
             "dlnn_studies.store.storage": {"dlnn_studies.spec.schema"}, "dlnn_studies.spec.schema": set(),
             "dlnn_studies.study.service": {"dlnn_studies.study.refine"},
             "dlnn_studies.study.refine": {"dlnn_studies.study.service", "dlnn_studies.cli.main"},
             "dlnn_studies.cli.main": set(), "dlnn_studies.ops.proxy": {"dlnn_studies.ops.proxy"}}
    assert len(layer_violations(graph)) == 4
    assert cycles(graph) == [["dlnn_studies.ops.proxy"], ["dlnn_studies.study.refine", "dlnn_studies.study.service"]]
    assert imported_names("from ..store import datasets as ds\nfrom . import records\n", "dlnn_studies.study.export") == {
        "dlnn_studies.store", "dlnn_studies.store.datasets", "dlnn_studies.study", "dlnn_studies.study.records"}


def test_the_command_table_is_the_only_entry_point():
    """Every command is in cli/main.py's table: no other module of the service runs as a script."""
    scripts = [module_name(p) for p in sorted((REPO / SERVICE).rglob("*.py")) if "__main__" in p.read_text()]
    assert scripts == [f"{SERVICE}.cli.main"]
