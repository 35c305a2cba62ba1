"""The commands that only look at studies start without torch: `dlnn --help`, `dlnn status` (the list
and one study) and `dlnn wait` import the configs, the spec and the storage, but not torch, timm,
scipy or boto3; the commands that train import those when they run. The configs can check names
without torch because the registries name what implements them: these tests also check that those
names are exactly what the torch modules implement."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

from service_support import env, tiny_spec, write_spec

from dlnn_core.activations import ACTIVATIONS
from dlnn_core.model_config import INIT_CHOICES, METHODS
from dlnn_core.optim import OPTIMIZERS, SCHEDULERS

HEAVY = ("torch", "timm", "scipy", "boto3")

# What `dlnn --help`, `dlnn status`, `dlnn status tiny` and `dlnn wait` do, in one process; prints
# their exit codes and which of HEAVY they loaded.
READ_ONLY_COMMANDS = f"""
import contextlib, io, json, sys
from dlnn_studies.cli.main import main

url = sys.argv[1]
codes = []
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main(["--help"])
    except SystemExit as exit_:
        codes.append(exit_.code)
    codes.append(main(["status", "--storage", url]))
    codes.append(main(["status", "tiny", "--storage", url]))
    codes.append(main(["wait", "--storage", url, "--study", "tiny", "--timeout", "5"]))
print(json.dumps({{"codes": codes, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_help_status_and_wait_load_no_torch(tmp_path):
    from dlnn_studies.spec.schema import load_spec
    from dlnn_studies.study.launch import launch

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    launch(load_spec(write_spec(tmp_path, tiny_spec())), url, log=lambda _: None, artifacts=tmp_path / "artifacts")
    run = subprocess.run([sys.executable, "-c", READ_ONLY_COMMANDS, url], cwd=tmp_path, env=env(),
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0, 0, 0], run.stderr
    assert result["loaded"] == [], f"dlnn --help/status/wait imported {result['loaded']}"


def test_the_torch_free_names_are_what_the_torch_modules_implement():
    import timm.scheduler
    import torch

    from dlnn_core import lagrangian, models

    assert set(lagrangian.DERIVATIVES) == set(METHODS)
    assert {"auto", *models.INITS} == set(INIT_CHOICES)
    assert all(issubclass(getattr(torch.nn, cls), torch.nn.Module) for cls in ACTIVATIONS.values())
    assert all(issubclass(info.optimizer_class(), torch.optim.Optimizer) for info in OPTIMIZERS.values())
    for info in SCHEDULERS.values():
        if info.target is not None:
            module, name = info.target.rsplit(".", 1)
            cls = getattr(importlib.import_module(module), name)
            assert issubclass(cls, timm.scheduler.scheduler.Scheduler) == info.timm, info.name
