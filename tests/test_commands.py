"""`dlnn`: one table holds every command (the operators' and the containers' too), and each parses `--help`."""

from __future__ import annotations

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
