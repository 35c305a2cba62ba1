"""Final evaluation, old against new, and its share of a trial, for every shipped spec.

"New" comes in two kinds: the full evaluation (every metric: `dlnn train`, a study's references
and its best trials) and the study's (`evaluate(metrics=<the spec's objectives>)`: what most
trials of a study run). The trial shares are the study's evaluation's.

The old evaluation is the package as it was before issue 16 (models included), extracted from git
(`--baseline REV`) or read from a folder holding its `dlnn_core` (`--baseline-dir`), and loaded
beside the current one under another name; both evaluate the same weights (a `fit` of
`--probe-epochs` epochs) on the same data, in one process, alternating. The model is the spec's
base config at the middle of its searched width, depth and batch size, with swish.

A trial's time is modelled as setup + epochs × one epoch + the new evaluation, the epoch timed by
that fit (its second epoch). Only trials that run to their last epoch are evaluated (a pruned
trial stops before), so the typical evaluated trial runs the spec's full epochs (rollout_vs_time:
the middle of its epochs range); the share after 5 epochs (Hyperband's min_resource) is shown too.

    python benchmarks/evaluation.py [--device cpu] [--specs quick damped_pendulum ...] [--out benchmarks/results/evaluation.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import math
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dlnn_core.data import load_data  # noqa: E402
from dlnn_core.evaluate import evaluate  # noqa: E402
from dlnn_core.train import DTYPES, build_seeded_model, fit, load_checkpoint  # noqa: E402
from dlnn_core.config import TrainConfig  # noqa: E402

BASELINE = "ba97447"  # main before issue 16
SPECS = ("quick", "damped_pendulum", "damped_double_pendulum", "optimizer_shootout", "rollout_vs_time")
SHORT_EPOCHS = 5


def load_old_package(baseline: str | None, baseline_dir: Path | None):
    """(evaluate, models) modules of the pre-issue-16 dlnn_core, loaded as `dlnn_core_old` (its imports are relative)."""
    if baseline_dir is None:
        folder = Path(tempfile.mkdtemp(prefix="dlnn-old-"))
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", baseline, "dlnn_core"], check=True, capture_output=True).stdout
        tarfile.open(fileobj=io.BytesIO(archive)).extractall(folder)
        baseline_dir = folder
    package = Path(baseline_dir) / "dlnn_core"
    spec = importlib.util.spec_from_file_location("dlnn_core_old", package / "__init__.py", submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["dlnn_core_old"] = module
    spec.loader.exec_module(module)
    return importlib.import_module("dlnn_core_old.evaluate"), importlib.import_module("dlnn_core_old.models")


def load_study(name: str) -> tuple[TrainConfig, dict]:
    """A shipped spec's base TrainConfig and its raw tables (read without the study service, so no Optuna is needed)."""
    raw = tomllib.loads((ROOT / "studies" / f"{name}.toml").read_text())
    return TrainConfig.from_dict(raw.get("base", {})), raw


def typical_epochs(base: TrainConfig, raw: dict) -> int:
    """Epochs of a trial that reaches its evaluation: the base epochs, or the median of a searched range."""
    searched = raw.get("space", {}).get("epochs")
    if searched is not None and "low" in searched:
        return int((searched["low"] + searched["high"]) // 2)
    return base.epochs


def typical_config(base: TrainConfig, raw: dict, device: torch.device | str, form: str) -> TrainConfig:
    """The spec's base config with the middle of each searched model size and batch size (and
    swish where the activation is searched): what a typical trial trains."""
    space = raw.get("space", {})
    flat = {"device": str(device), "model.form": form}
    for key in ("hidden", "depth"):
        searched = space.get("model", {}).get(key)
        if searched and "low" in searched:
            step = searched.get("step", 1)
            flat[f"model.{key}"] = int(searched["low"] + step * round((searched["high"] - searched["low"]) / 2 / step))
    if "activation" in space.get("model", {}):
        flat["model.activation"] = "swish"
    batch = space.get("batch_size", {}).get("choices")
    if batch:
        flat["batch_size"] = sorted(batch)[len(batch) // 2]
    return base.with_flat(flat)


def timed(fn, device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def max_rel_difference(new: dict, old: dict) -> float:
    worst = 0.0
    for key, value in old.items():
        if math.isfinite(value) and math.isfinite(new[key]):
            worst = max(worst, abs(new[key] - value) / max(abs(value), 1e-12))
        elif new[key] != value:
            worst = math.inf
    return worst


def measure(spec_name: str, form: str, device: torch.device, old: tuple, probe_epochs: int, repeat: int) -> dict:
    """Old and new evaluation of the model `fit` trained for `probe_epochs` (what a trial evaluates;
    an untrained free-form L rolls out chaotically), and that fit's epoch time."""
    base, raw = load_study(spec_name)
    config = typical_config(base, raw, device, form)
    splits = load_data(config.data, config.data_seed)
    dtype = DTYPES[config.dtype]
    with tempfile.TemporaryDirectory() as out:
        result = fit(config.with_flat({"epochs": max(probe_epochs, 1)}), out_dir=out)
        model = build_seeded_model(config, splits, device) if result.checkpoint is None else load_checkpoint(result.checkpoint, str(device))[0]
    old_evaluate, old_models = old
    old_model = old_models.build_model(config.model, splits.system, config.method).to(device=device, dtype=dtype)
    old_model.load_state_dict(model.state_dict())
    objectives = tuple(raw.get("objective", {}).get("metrics", [raw.get("objective", {}).get("metric", "val_rel_mse")]))
    evaluate(model, splits, dtype, device)  # warm-up (first CUDA kernels, lazy imports)
    t_full = t_study = t_old = math.inf
    for _ in range(repeat):  # alternating, the fastest of each: a shared machine's noise hits all
        new, t = timed(lambda: evaluate(model, splits, dtype, device), device)
        t_full = min(t_full, t)
        study, t = timed(lambda: evaluate(model, splits, dtype, device, metrics=objectives), device)
        t_study = min(t_study, t)
        old, t = timed(lambda: old_evaluate.evaluate(old_model, splits, dtype, device), device)
        t_old = min(t_old, t)
    new = {k: v for k, v in new.items() if k in old}  # the short aliases (rollout_error, ...) came later
    row = {"spec": spec_name, "form": form, "hidden": config.model.hidden, "depth": config.model.depth, "batch": config.batch_size,
           "objectives": objectives, "old_s": t_old, "full_s": t_full, "new_s": t_study, "ratio": t_old / t_study,
           "max_rel_diff": max_rel_difference(new, old), "study_diff": max_rel_difference(study, {k: v for k, v in new.items() if k in study})}
    if probe_epochs >= 2:
        times = [h["time_s"] for h in result.history]
        epoch = times[-1] - times[-2]
        setup = times[0]  # data, model, first validation
        epochs = typical_epochs(base, raw)
        trial = setup + epochs * epoch + t_study
        short = setup + min(SHORT_EPOCHS, epochs) * epoch + t_study
        row.update(epoch_s=epoch, epochs=epochs, trial_s=trial, share=t_study / trial, old_share=t_old / (trial - t_study + t_old),
                   short_share=t_study / short, old_short_share=t_old / (short - t_study + t_old))
    return row


def table(rows: list[dict]) -> str:
    lines = ["| spec | form | hidden×depth, batch | old eval s | full eval s | study eval s | old/study | max rel diff full vs old (study vs full) "
             "| epoch s | typical epochs | trial s | eval share study (old) | share at 5 epochs study (old) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        trial = (f"{r['epoch_s']:.2f} | {r['epochs']} | {r['trial_s']:.1f} | {r['share']:.1%} ({r['old_share']:.1%}) | "
                 f"{r['short_share']:.1%} ({r['old_short_share']:.1%})") if "epoch_s" in r else "– | – | – | – | –"
        lines.append(f"| {r['spec']} | {r['form']} | {r['hidden']}×{r['depth']}, {r['batch']} | {r['old_s']:.2f} | {r['full_s']:.2f} | {r['new_s']:.2f} | "
                     f"{r['ratio']:.0f}× | {r['max_rel_diff']:.1e} ({r['study_diff']:.0e}) | {trial} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--specs", nargs="+", default=list(SPECS))
    parser.add_argument("--forms", nargs="+", default=["free", "structured"])
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old evaluation (default: main before issue 16)")
    parser.add_argument("--baseline-dir", type=Path, default=None, help="a folder holding the old dlnn_core instead of --baseline")
    parser.add_argument("--probe-epochs", type=int, default=2, help="epochs fit trains the evaluated model for; from 2, the second times an epoch for the trial shares")
    parser.add_argument("--repeat", type=int, default=2, help="evaluations of each kind, alternating; the fastest counts")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="also write the table (with the command) to this markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    old = load_old_package(args.baseline, args.baseline_dir)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"
    header = f"device: {name}; torch {torch.__version__}; old = {args.baseline_dir or args.baseline}"
    print(header, flush=True)
    rows = []
    for spec_name in args.specs:
        for form in args.forms:
            rows.append(measure(spec_name, form, device, old, args.probe_epochs, args.repeat))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    print(text)
    if args.out is not None:
        command = "python " + " ".join([str(Path(sys.argv[0]))] + sys.argv[1:])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(f"Measured by `{command}` ({time.strftime('%Y-%m-%d')}).\n\n{header}\n\n{text}\n")


if __name__ == "__main__":
    main()
