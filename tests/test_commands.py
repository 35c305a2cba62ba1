"""`dlnn`: one table holds every command (the operators' and the containers' too), and each parses `--help`."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dlnn_studies.cli.main import commands, main

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "lr-find", "launch", "work", "status", "export", "refine", "report", "verify", "dashboard", "run",
            "launch-all", "wait", "proxy", "gpu-slot")


def test_the_table_holds_every_command():
    assert sorted(commands()) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_parses_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: dlnn {command} ") and "--debug" in out


def test_the_dlnn_script_is_the_table():
    """pyproject's `dlnn` is cli/main.py's main(); the installed script (or `python -m`) lists and runs every command."""
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"] == {"dlnn": "dlnn_studies.cli.main:main"}
    script = Path(sys.executable).parent / "dlnn"
    dlnn = [str(script)] if script.is_file() else [sys.executable, "-m", "dlnn_studies.cli.main"]
    listed = subprocess.run([*dlnn, "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert all(f"    {command}" in listed.stdout for command in COMMANDS), listed.stdout
    proxy = subprocess.run([*dlnn, "proxy", "--help"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proxy.returncode == 0 and proxy.stdout.startswith("usage: dlnn proxy ") and "--threads" in proxy.stdout, proxy.stderr


def test_a_command_without_its_storage_is_a_user_error(capsys, monkeypatch):
    monkeypatch.delenv("DLNN_STORAGE", raising=False)
    assert main(["wait"]) == 1 and main(["proxy"]) == 1
    assert capsys.readouterr().err.count("no storage: pass --storage URL or set DLNN_STORAGE") == 2


def test_dlnn_version_prints_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out == f"dlnn {version}\n"


def test_a_reader_that_leaves_early_ends_the_command_quietly(tmp_path):
    """`dlnn ... | head -1`: no BrokenPipeError traceback, and the exit status of a program killed by
    SIGPIPE (141, as `cat`'s). First with the pipe closed before the command writes (always a broken
    pipe), then through a real `head -1` a few times (the pipe breaks only when head leaves first)."""
    from service_support import env, tiny_spec, write_spec

    from dlnn_studies.spec.schema import load_spec
    from dlnn_studies.study.launch import launch

    url = f"sqlite:///{tmp_path / 'dlnn.db'}"
    launch(load_spec(write_spec(tmp_path, tiny_spec())), url, log=lambda _: None, artifacts=tmp_path / "artifacts")
    dlnn = [sys.executable, "-m", "dlnn_studies.cli.main"]
    plain = {k: v for k, v in env().items() if k != "PYTHONUNBUFFERED"}  # stdout block-buffered, as in a user's shell
    for argv in (["--help"], ["status", "tiny", "--json", "--storage", url]):
        read, write = os.pipe()
        os.close(read)  # the reader has gone before the command writes anything
        proc = subprocess.Popen([*dlnn, *argv], stdout=write, stderr=subprocess.PIPE, env=plain, cwd=tmp_path)
        os.close(write)
        err = proc.communicate(timeout=120)[1].decode()
        assert (proc.returncode, err) == (141, ""), argv
    for _ in range(3):
        run = subprocess.run(["bash", "-c", 'set -o pipefail; "$@" | head -1', "-", *dlnn, "status", "--json", "--storage", url],
                             capture_output=True, text=True, env=plain, cwd=tmp_path, timeout=120)
        assert run.returncode in (0, 141) and run.stderr == "" and run.stdout.count("\n") == 1, (run.returncode, run.stderr)


# What the README's commands leave in the working directory by default (`dlnn run` on the SQLite default
# with its WAL and lock files, artifacts, exports and reports; `dlnn train`; `dlnn lr-find`'s plot).
LEFT_BY_THE_DEMO = ("dlnn.db", "dlnn.db-wal", "dlnn.db-shm", "dlnn.db.dlnn-lock", "dlnn_artifacts/x", "exports/quick/x.yaml",
                    "reports/quick/report.html", "runs/x/model.pt", "lr-find-adamw.png")


@pytest.mark.skipif(not (REPO / ".git").exists(), reason="not a git checkout")
def test_git_ignores_what_the_commands_leave_and_nothing_tracked():
    def ignored(paths) -> set[str]:
        run = subprocess.run(["git", "check-ignore", "--no-index", "--stdin"], cwd=REPO, input="\n".join(paths) + "\n",
                             capture_output=True, text=True, timeout=60)
        return set(run.stdout.splitlines())

    assert set(LEFT_BY_THE_DEMO) - ignored(LEFT_BY_THE_DEMO) == set()
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()
    assert ignored(tracked) == set()


@pytest.mark.parametrize("argv", [["train", "published_dlnn", "--threads", "0"], ["lr-find", "published_dlnn", "--threads", "x"],
                                  ["work", "tiny", "--threads", "two"]])
def test_a_thread_count_that_is_not_a_positive_integer_is_a_user_error(argv, capsys):
    assert main(argv) == 1
    assert f"argument --threads: {argv[-1]!r} is not a positive integer" in capsys.readouterr().err
