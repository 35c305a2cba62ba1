"""Study names: one check for every place a new name enters (a spec's study.name, --name of
launch, run and refine), and a safe folder for files named after a study, whatever name the
storage holds (a study created through the Optuna API may be called `../../x` or `/etc`)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from dlnn_core.errors import shorten

from ..errors import UsageError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
NAME_RULE = "1-128 letters, digits, '_', '-' or '.', starting with a letter or digit"


def name_problem(name: Any) -> str | None:
    """Why `name` cannot name a study (the value shortened), or None when it can."""
    if isinstance(name, str) and NAME_RE.match(name):
        return None
    return f"{shorten(repr(name))} must be {NAME_RULE}"


def check_name(name: Any, field: str) -> str:
    """`name` when it is a valid study name, else a UsageError naming `field`."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"{field}: {problem}")
    return name


def folder_name(name: str) -> str:
    """A valid name as it is; any other becomes its safe characters plus a hash of the whole name,
    so two different unsafe names never share a folder."""
    if name_problem(name) is None:
        return name
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", name).lstrip("._-")[:96]
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{safe}-{digest}" if safe else f"study-{digest}"


def study_folder(out: str | Path, name: str) -> Path:
    """out/<folder_name(name)>, checked (after resolving links) to lie inside `out`."""
    out = Path(out)
    folder = out / folder_name(name)
    root = out.resolve()
    if folder.resolve().parent != root:
        raise UsageError(f"--out {shorten(str(out))}: the folder for study {shorten(repr(name))} would lie outside it "
                         f"({shorten(str(folder.resolve()))})")
    return folder
