"""Optuna's own storage tests, taken from the installed Optuna's sdist at test time, run against every
storage the service builds (see storage_contract_plugin.py for the kinds and the deselected tests).

The sdist is downloaded once with pip and its tests/ kept in the user's cache directory
($XDG_CACHE_HOME or ~/.cache, under dlnn-studies/); without network on the first run the test fails
and says so, as the service tests do without PostgreSQL: a contract that silently did not run would
pass an Optuna upgrade that breaks our storages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import optuna
import pytest
from service_support import REPO, _admin, create_pg_database, drop_pg_database, env

KINDS = ("sqlite", "postgresql", "view", "grpc")
# The files of Optuna's tests/storages_tests that ask StorageSupplier for their storages. The others
# test Optuna's own classes by name (rdb_tests, test_cached_storage with patched backends), its journal
# storages, or a server given by $TEST_DB_URL to Optuna's plain RDBStorage (test_with_server).
TEST_FILES = ("test_storages.py", "test_heartbeat.py", "test_callbacks.py", "test_grpc.py")
RUN_TIMEOUT_S = 600


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dlnn-studies"


def optuna_tests(version: str = optuna.__version__) -> Path:
    """tests/ and pyproject.toml of Optuna `version`'s sdist, downloaded once and kept in cache_dir();
    the sdist's optuna/ package is left out, so the tests import the installed Optuna."""
    root = cache_dir() / f"optuna-{version}-tests"
    if (root / "tests" / "storages_tests").is_dir():
        return root
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        pip = subprocess.run([sys.executable, "-m", "pip", "download", f"optuna=={version}", "--no-binary", ":all:",
                              "--no-deps", "-q", "-d", tmp],
                             capture_output=True, text=True, timeout=300)
        sdists = list(Path(tmp).glob("optuna-*.tar.gz"))
        if pip.returncode != 0 or len(sdists) != 1:
            pytest.fail(f"could not download Optuna {version}'s sdist for its storage tests (pip exited "
                        f"{pip.returncode}; this test needs PyPI once, then reads {root}):\n{pip.stderr[-2000:]}")
        unpacked = Path(tmp) / "unpacked"
        prefix = f"optuna-{version}/"
        with tarfile.open(sdists[0]) as tar:
            members = [m for m in tar.getmembers()
                       if m.name.startswith(prefix + "tests/") or m.name == prefix + "pyproject.toml"]
            safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python 3.11.4 on
            tar.extractall(unpacked, members=members, **safe)
        try:
            (unpacked / prefix).rename(root)
        except OSError:  # another session got there first
            if not (root / "tests" / "storages_tests").is_dir():
                raise
    return root


def _selected_kinds(session) -> list[str]:
    return [item.callspec.params["kind"] for item in session.items
            if getattr(item, "originalname", None) == "test_optuna_storage_contract"]


def _without_commit_flush(name: str) -> None:
    """Commits on the run's throwaway database return before the server flushes them to disk: the
    contract is about what the storage answers, not about waiting for the disk."""
    conn = _admin()
    with conn.cursor() as cur:
        cur.execute(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    conn.close()


@pytest.fixture(scope="module")
def contract_runs(request, tmp_path_factory):
    """Every selected kind's run started at once, one pytest subprocess each, with the plugin: most of
    Optuna's heartbeat tests wait for trials to go stale, and the waits overlap. Yields kind ->
    (process, its output file, its report file)."""
    root = optuna_tests()
    folder = tmp_path_factory.mktemp("storage-contract")
    files = [str(root / "tests" / "storages_tests" / f) for f in TEST_FILES]
    runs, databases = {}, []
    try:
        for kind in _selected_kinds(request.session):
            extra = {"DLNN_CONTRACT_KIND": kind, "DLNN_CONTRACT_REPORT": str(folder / f"{kind}.json")}
            if kind == "postgresql":  # one database for the run, emptied by the plugin before each test
                name, extra["DLNN_CONTRACT_PG_URL"] = create_pg_database()
                databases.append(name)
                _without_commit_flush(name)
            run_env = env(**extra)
            run_env["PYTHONPATH"] = str(REPO / "tests") + os.pathsep + run_env["PYTHONPATH"]
            output = folder / f"{kind}.log"
            with open(output, "w") as out:
                proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "storage_contract_plugin",
                                         "-p", "no:cacheprovider", "-q", "--color=no", "-rfE", *files],
                                        cwd=root, env=run_env, stdout=out, stderr=subprocess.STDOUT)
            runs[kind] = (proc, output, folder / f"{kind}.json")
        yield runs
    finally:
        for proc, *_ in runs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for name in databases:
            drop_pg_database(name)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_optuna_storage_contract(kind, contract_runs):
    """Every collected test of Optuna's but the deselected ones passes on `kind`."""
    proc, output, report_file = contract_runs[kind]
    try:
        proc.wait(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"Optuna's storage tests on {kind} ran past {RUN_TIMEOUT_S} s:\n{output.read_text()[-8000:]}")
    log = output.read_text()
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    failed = sorted(k for k, v in report.get("outcomes", {}).items() if v == "failed")
    assert proc.returncode == 0 and not failed and report.get("collected"), (
        f"Optuna {optuna.__version__}'s storage tests failed on {kind} (exit {proc.returncode}): {failed}\n{log[-8000:]}")
    passed = sum(v == "passed" for v in report["outcomes"].values())
    print(f"{kind}: {report['collected']} collected, {passed} passed, {len(report['deselected'])} deselected, "
          f"{report['seconds']} s")
