"""Reading the code's shape from its source (ast, nothing imported): the import graph and its
cycles, module and function sizes, function-local imports, and every use of a private Optuna name.
tests/test_layout.py asserts on these; benchmarks/layout_metrics.py prints them."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVICE = "dlnn_studies"
PACKAGES = (SERVICE, "dlnn_core")
ADAPTER = f"{SERVICE}.store.optuna_private"  # the one module allowed to name Optuna's private parts

# Private attributes of Optuna's objects (Trial, FrozenTrial, Study, storages, artifact stores, the
# RDB models) and private keys Optuna writes, that code could be tempted to reach for.
OPTUNA_PRIVATE_ATTRS = frozenset({
    "_trial_id", "_study_id", "_storage", "_get_filepath", "_backend", "_datetime_start_utc", "_datetime_complete_utc",
    "_cached_frozen_trial", "_studies", "_trial_id_to_study_id_and_number", "_read_trials_from_remote_storage",
    "_add_trials_to_cache", "_get_stale_trial_ids", "_directions", "_thread_local", "_log_completed_trial",
    "_artifact_store", "_params", "_distributions", "_user_attrs", "_system_attrs", "_heartbeat_interval",
})
OPTUNA_PRIVATE_STRINGS = frozenset({"retry_history", "failed_trial", "fixed_params"})  # system attrs Optuna writes


def module_name(path: Path, root: Path = REPO) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(folders: tuple[str, ...] = PACKAGES, root: Path = REPO) -> dict[str, Path]:
    """{dotted module name: its file} over the .py files under `folders`."""
    return {module_name(p, root): p for folder in folders for p in sorted((root / folder).rglob("*.py"))}


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


def import_graph(folders: tuple[str, ...] = PACKAGES, root: Path = REPO) -> dict[str, set[str]]:
    """{module: every name it imports}, over the .py files under `folders`."""
    return {name: imported_names(path.read_text(), name, path.name == "__init__.py") for name, path in modules(folders, root).items()}


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


def long_functions(folders: tuple[str, ...] = PACKAGES, root: Path = REPO, limit: int = 60) -> list[tuple[str, str, int]]:
    """(module, qualified function name, lines) for every function or method longer than `limit` lines."""
    out = []
    for name, path in modules(folders, root).items():
        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        out.append((name, prefix + child.name, length))
                    walk(child, f"{prefix}{child.name}.")
                elif isinstance(child, ast.ClassDef):
                    walk(child, f"{prefix}{child.name}.")
        walk(ast.parse(path.read_text()), "")
    return sorted(out, key=lambda x: -x[2])


def big_modules(folders: tuple[str, ...] = PACKAGES, root: Path = REPO, limit: int = 400) -> list[tuple[str, int]]:
    """(module, lines) for every module longer than `limit` lines."""
    sizes = [(name, len(path.read_text().splitlines())) for name, path in modules(folders, root).items()]
    return sorted([s for s in sizes if s[1] > limit], key=lambda x: -x[1])


def local_imports(folders: tuple[str, ...] = PACKAGES, root: Path = REPO) -> dict[str, int]:
    """{module: number of import statements inside its functions} (modules with none left out)."""
    out = {}
    for name, path in modules(folders, root).items():
        n = sum(1 for node in _function_nodes(ast.parse(path.read_text())) for c in _own_nodes(node)
                if isinstance(c, (ast.Import, ast.ImportFrom)))
        if n:
            out[name] = n
    return out


def _function_nodes(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]


def _own_nodes(func: ast.AST):
    """The nodes of a function's body, not descending into nested functions (counted on their own)."""
    todo = list(ast.iter_child_nodes(func))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def private_optuna_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each private Optuna name in `source`: an attribute in OPTUNA_PRIVATE_ATTRS, a
    string key in OPTUNA_PRIVATE_STRINGS, or an import from a private Optuna module or of a private name."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and node.attr in OPTUNA_PRIVATE_ATTRS:
            out.append((node.lineno, f".{node.attr}"))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in OPTUNA_PRIVATE_STRINGS:
            out.append((node.lineno, repr(node.value)))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optuna":
            if any(p.startswith("_") for p in node.module.split(".")) or any(a.name.startswith("_") for a in node.names):
                out.append((node.lineno, f"from {node.module} import {', '.join(a.name for a in node.names)}"))
    return sorted(out)


def private_optuna_modules(folders: tuple[str, ...] = (SERVICE, "benchmarks"), root: Path = REPO) -> dict[str, list[tuple[int, str]]]:
    """{module: its private Optuna uses}, every module but the adapter."""
    found = {}
    for name, path in modules(tuple(f for f in folders if (root / f).is_dir()), root).items():
        if name != ADAPTER:
            uses = private_optuna_uses(path.read_text())
            if uses:
                found[name] = uses
    return found
