"""Run N copies of a benchmark's child command at once; each prints one JSON line last."""

from __future__ import annotations

import json
import subprocess

CHILD_INDEX = "CHILD_INDEX"


def json_children(cmd: list[str], count: int, env: dict[str, str], what: str = "worker") -> list[dict]:
    """Start `count` processes of `cmd` together, wait for all, and return each one's last stdout
    line parsed as JSON; a child that fails raises with the tail of its stderr. Each child finds
    its index (0 … count − 1) in the environment variable CHILD_INDEX, to seed itself apart."""
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**env, CHILD_INDEX: str(i)})
             for i in range(count)]
    results = []
    for p in procs:
        out, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"{what} failed:\n{err[-3000:]}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results
