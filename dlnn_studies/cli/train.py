"""`dlnn train CONFIG` and `dlnn lr-find CONFIG`: one training run or one learning-rate range test
from a config file (or a preset name), with `--set key=value` overrides by dotted name. The CLI
merges `COMMANDS`: name -> (configure(parser), run(args) -> exit code)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from dlnn_core.config import PRESETS, TrainConfig, load_config
from dlnn_core.errors import ConfigError, shorten

from ..errors import UsageError

EXIT_OK, EXIT_DIVERGED = 0, 2
# One config's training on a CPU: with two torch threads on a 2-core machine it was several times
# slower whenever anything else ran, and hardly faster when nothing did (benchmarks/results/train_threads.md).
DEFAULT_THREADS = 1


def _configure_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help=f"a .json/.yaml/.yml TrainConfig file, or a preset name ({', '.join(PRESETS)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a setting by its dotted name, e.g. optimizer.lr=1e-3 or data.params.rho=0.2 (repeatable)")
    from ..store.urls import argument

    parser.add_argument("--artifacts", default=None, metavar="STORE", type=argument,
                        help="artifact store to fetch the config's data file from by its sha256 (data.file_sha256): a directory or "
                             "s3://BUCKET/PREFIX; default $DLNN_ARTIFACTS, else none: a file already cached here, or the named "
                             "file if its hash matches")
    from .study import positive_int

    parser.add_argument("--threads", type=positive_int, default=DEFAULT_THREADS,
                        help=f"torch CPU threads (default {DEFAULT_THREADS}; see benchmarks/results/train_threads.md)")


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["optimizer.lr=1e-3", "model.hidden=64"] -> {"optimizer.lr": "1e-3", "model.hidden": 64}: each
    value read as YAML, as a config file's values are, so the config's field rules then read a number
    written as a string ("1e-3", which YAML 1.1 leaves a string) by the one rule of a YAML config
    (dlnn_core.fields.as_number): `--set epochs=1e4` and `epochs: 1e4` give the same 10000."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {shorten(repr(item))}: expected KEY=VALUE, e.g. optimizer.lr=1e-3")
        text = raw.strip()
        try:
            out[key.strip()] = yaml.safe_load(raw) if text else None
        except yaml.YAMLError as exc:
            raise UsageError(f"--set {shorten(repr(item))}: value is not valid YAML ({shorten(str(exc))})") from None
    return out


def load_train_config(source: str, overrides: list[str] | None = None) -> TrainConfig:
    """A config from a file or a preset name, with `--set` overrides; every mistake is a UsageError."""
    import yaml

    flat = parse_overrides(overrides or [])
    try:
        path = Path(source)
        if path.is_file():
            config = load_config(path)
        elif source in PRESETS:
            config = PRESETS[source]
        else:
            raise UsageError(f"config: {source!r} is neither a file nor a preset (presets: {', '.join(PRESETS)})")
        return config.with_flat(flat) if flat else config
    except ConfigError as exc:
        raise UsageError(f"{shorten(source)}: {exc}") from None
    except (ValueError, TypeError, OSError, yaml.YAMLError) as exc:  # malformed JSON/YAML or values of the wrong type
        raise UsageError(f"{shorten(source)}: cannot read config: {shorten(str(exc), 300)}") from None


def local_data(config: TrainConfig, artifacts: str | None) -> TrainConfig:
    """The config with its pinned dataset file (if any) resolved to a verified local copy: fetched
    from the store by hash, a cached copy, or the named file only if its hash matches; otherwise
    a UsageError that names the file and the sha256 it needs."""
    from ..store.artifacts import open_store
    from ..store.datasets import config_file, localize, short
    from ..store.urls import artifacts_url

    file, sha256 = config_file(config)
    if file is None:
        return config
    url = artifacts_url(artifacts, default=None)
    local = localize(config, open_store(url) if url else None, log=lambda m: print(m, file=sys.stderr))
    print(f"dataset: {file}" + (f" (sha256 {short(sha256)}…)" if sha256 else "") + f" -> {config_file(local)[0]}", file=sys.stderr)
    return local


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ----------------------------------------------------------------------------- train


def configure_train(parser: argparse.ArgumentParser) -> None:
    _configure_config(parser)
    parser.add_argument("--out", type=Path, default=None,
                        help="run directory for model.pt, config.json and metrics.json (default: runs/<config>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> int:
    """Train, showing a progress bar with the loss and learning rate; print the final metrics.
    Exit 0 when the run finished, 2 when it diverged."""
    from tqdm import tqdm

    from dlnn_core.train import fit

    config = local_data(load_train_config(args.config, args.overrides), args.artifacts)
    set_threads(args.threads)
    out = args.out or Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    bar = tqdm(total=config.epochs, desc="train", unit="epoch", file=sys.stderr, disable=args.no_progress, dynamic_ncols=True)

    stage = [None]

    def progress(record: dict[str, Any]) -> None:
        if record.get("phase") in ("shooting", "evaluate"):  # after the last epoch: the same bar shows the stages that follow
            if args.no_progress:
                return
            name = "shooting" if record["phase"] == "shooting" else f"evaluate {record['stage']}"
            if stage[0] != name:
                stage[0] = name
                bar.set_description_str(name, refresh=False)
                bar.unit = {"shooting": "eval", "evaluate rollout": "step"}.get(name, "part")
                bar.set_postfix({}, refresh=False)
                bar.reset(total=record["total"])
            bar.update(record["done"] - bar.n)
            if record["done"] == record["total"]:
                bar.refresh()  # each stage's end stays on screen, however fast it went
            return
        postfix = {"loss": _format(record["train_loss"]), "val": _format(record["val_rel_mse"]), "lr": _format(record["lr"])}
        if "d" in record:
            postfix["d"] = _format(record["d"])
        bar.set_postfix(postfix, refresh=False)
        bar.update(1)

    try:
        result = fit(config, out_dir=out, progress=progress)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    print(f"status: {result.status}   epochs: {result.epochs_run}   best epoch: {result.best_epoch}   "
          f"device: {result.device}   wall time: {result.wall_time_s:.1f} s")
    if result.status != "ok":
        print(f"diverged at epoch {result.diverged_epoch}: {result.reason}")
        print(f"note: {out / 'diverged.json'}")
        return EXIT_DIVERGED
    width = max(len(k) for k in result.metrics)
    for key in sorted(result.metrics):
        print(f"  {key:<{width}}  {_format(result.metrics[key])}")
    print(f"checkpoint: {result.checkpoint}")
    return EXIT_OK


# ----------------------------------------------------------------------------- lr-find


def configure_lr_find(parser: argparse.ArgumentParser) -> None:
    _configure_config(parser)
    parser.add_argument("--out", type=Path, default=None, help="PNG plot path (default: lr-find-<optimizer>.png)")
    parser.add_argument("--start", type=float, default=None, help="first learning rate (default: the optimizer's range / 100)")
    parser.add_argument("--end", type=float, default=None, help="last learning rate (default: the optimizer's range × 100)")
    parser.add_argument("--steps", type=int, default=200, help="number of steps of the scan (default 200)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_lr_find(args: argparse.Namespace) -> int:
    """Run the range test, print the suggested range and write the plot."""
    from dlnn_core.lr_find import lr_find
    from dlnn_core.optim import OPTIMIZERS

    from tqdm import tqdm

    config = local_data(load_train_config(args.config, args.overrides), args.artifacts)
    set_threads(args.threads)
    plot = args.out or Path(f"lr-find-{config.optimizer.name}.png")
    bar = tqdm(total=args.steps, desc="lr-find", unit="step", file=sys.stderr, disable=getattr(args, "no_progress", False), dynamic_ncols=True)

    def progress(record: dict[str, Any]) -> None:
        bar.set_postfix({"lr": _format(record["lr"]), "loss": _format(record["loss"])}, refresh=False)
        bar.update(record["step"] - bar.n)

    try:
        result = lr_find(config, start_lr=args.start, end_lr=args.end, steps=args.steps, plot_path=plot, progress=progress)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    finally:
        bar.close()
    what = "lr multiplier" if OPTIMIZERS[config.optimizer.name].adaptive_d else "learning rate"
    print(f"optimizer: {result.optimizer}   steps: {len(result.lrs)}   {result.reason}")
    if result.suggested:
        low, high = result.suggested
        print(f"suggested {what} range: {low:.3g} .. {high:.3g}")
        print(f"suggested {what}: {result.suggested_lr:.3g}   (loss minimum at {result.min_loss_lr:.3g})")
    else:
        print(f"no suggestion: the loss did not fall over {result.lrs[0] if result.lrs else args.start} .. {result.lrs[-1] if result.lrs else args.end}")
    print(f"registry range for {result.optimizer}: {OPTIMIZERS[result.optimizer].lr_range[0]:.3g} .. {OPTIMIZERS[result.optimizer].lr_range[1]:.3g}")
    print(f"plot: {result.plot}")
    return EXIT_OK


COMMANDS = {
    "train": (configure_train, run_train),
    "lr-find": (configure_lr_find, run_lr_find),
}
