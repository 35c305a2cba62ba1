"""The layout is the architecture: imports run one way (cli -> study -> spec -> store, cli -> ops -> store),
dlnn_core never imports the service or Optuna, neither the service's modules nor the core's import a
cycle, and no module but the adapter names a private Optuna attribute.

Every import counts, those inside functions too: an import deferred to a function is still a dependency
(and the usual way a cycle hides)."""

from __future__ import annotations

from layout_support import (ADAPTER, REPO, SERVICE, cycles, import_graph, imported_names, module_name, private_optuna_modules,
                            private_optuna_uses)

# subpackage of dlnn_studies -> the subpackages it must not import
FORBIDDEN = {
    "study": ("cli", "ops"),
    "spec": ("study", "cli", "ops"),
    "store": ("spec", "study", "cli", "ops"),
    "ops": ("cli", "study", "spec"),
}


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


def test_the_core_modules_import_no_cycle():
    """dlnn_core too: every import counts, those inside functions and under TYPE_CHECKING as well."""
    assert cycles(import_graph(("dlnn_core",))) == []


PRIVATE_ALLOWED: set[str] = set()  # modules allowed to name a private Optuna attribute outside the adapter: none


def test_no_module_but_the_adapter_names_a_private_optuna_attribute():
    """Optuna's private attributes (_trial_id, _study_id, _storage, _get_filepath, ...) and the system
    attr keys Optuna writes ("retry_history", ...) are named in store/optuna_private.py alone."""
    found = {m: uses for m, uses in private_optuna_modules().items() if m not in PRIVATE_ALLOWED}
    assert found == {}, found
    assert ADAPTER in import_graph((SERVICE,))


def test_the_checks_catch_what_they_are_for():
    graph = {"dlnn_core.train": {"optuna"}, "dlnn_core.models": {"dlnn_studies.errors"},
             "dlnn_studies.store.storage": {"dlnn_studies.spec.schema"}, "dlnn_studies.spec.schema": set(),
             "dlnn_studies.study.service": {"dlnn_studies.study.refine"},
             "dlnn_studies.study.refine": {"dlnn_studies.study.service", "dlnn_studies.cli.main"},
             "dlnn_studies.cli.main": set(), "dlnn_studies.ops.proxy": {"dlnn_studies.ops.proxy"}}
    assert len(layer_violations(graph)) == 4
    assert cycles(graph) == [["dlnn_studies.ops.proxy"], ["dlnn_studies.study.refine", "dlnn_studies.study.service"]]
    assert [w for _, w in private_optuna_uses(
        "t._trial_id\ns.study._storage.get(x._study_id)\nk = 'retry_history'\nfrom optuna.storages._rdb import models\n"
        "self._lock\nname = 'retry'\n")] == ["._trial_id", "._storage", "._study_id", "'retry_history'",
                                          "from optuna.storages._rdb import models"]
    assert imported_names("from ..store import datasets as ds\nfrom . import records\n", "dlnn_studies.study.export") == {
        "dlnn_studies.store", "dlnn_studies.store.datasets", "dlnn_studies.study", "dlnn_studies.study.records"}


def test_the_command_table_is_the_only_entry_point():
    """Every command is in cli/main.py's table: no other module of the service runs as a script."""
    scripts = [module_name(p) for p in sorted((REPO / SERVICE).rglob("*.py")) if "__main__" in p.read_text()]
    assert scripts == [f"{SERVICE}.cli.main"]
