"""Trials per hour on one GPU with N worker processes sharing it, and whether a training step waits
on the host.

Throughput: N processes (spawned together, one CPU thread each) run `fit` on the same typical
trial of a spec (benchmarks/evaluation.py's `typical_config`) for `--epochs` epochs, while
nvidia-smi samples GPU utilisation every 200 ms. Each process's trial at the spec's typical length
is modelled as setup + epochs × its epoch time + its evaluation time, and the GPU's rate is
N × 3600 / that time.

Host syncs: a torch.profiler trace of `fit`'s training epochs (stopped before the final
evaluation) counts the calls that make the host wait for the GPU (cudaStreamSynchronize,
cudaDeviceSynchronize, aten::_local_scalar_dense, aten::item, aten::nonzero) and divides by the
number of training steps; fit reads back once per epoch, so well below 1 per step means none per step.
aten::item on a CPU tensor (Adam's step counts) does not wait for the GPU; the CUDA calls tell.

    python benchmarks/gpu_throughput.py [--spec damped_double_pendulum] [--form structured] [--workers 1 2 4 8] [--epochs 3] [--profile]
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from dlnn_core.config import TrainConfig  # noqa: E402
from dlnn_core.data import load_data  # noqa: E402
from dlnn_core.train import fit  # noqa: E402
from evaluation import load_study, typical_config, typical_epochs  # noqa: E402

SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::_local_scalar_dense", "aten::item", "aten::nonzero", "cudaMemcpyAsync")


def _worker(config: dict, barrier, results) -> None:
    torch.set_num_threads(1)
    torch.zeros(1, device=TrainConfig.from_dict(config).device)  # the CUDA context before the clock starts
    barrier.wait()
    start = time.perf_counter()
    result = fit(TrainConfig.from_dict(config))
    wall = time.perf_counter() - start
    results.put({"wall": wall, "times": [h["time_s"] for h in result.history], "status": result.status})


def _sampler() -> subprocess.Popen | None:
    try:
        return subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "200"],
                                stdout=subprocess.PIPE, text=True)
    except FileNotFoundError:  # no nvidia-smi: no utilisation figures
        return None


def throughput(config: TrainConfig, workers: int, typical: int) -> dict:
    """One level: N processes at once; their mean epoch, evaluation and modelled trial time, the GPU's trials per hour and utilisation."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(config.to_dict(), barrier, results)) for _ in range(workers)]
    for p in procs:
        p.start()
    barrier.wait()
    smi = _sampler()
    start = time.perf_counter()
    rows = [results.get() for _ in procs]
    wall = time.perf_counter() - start
    samples = []
    if smi is not None:
        smi.terminate()
        samples = [line.split(",") for line in smi.communicate()[0].splitlines() if line.strip()]
    for p in procs:
        p.join()
    util = [float(s[0]) for s in samples]
    memory = [float(s[1]) for s in samples]
    epochs = [(r["times"][-1] - r["times"][1]) / (len(r["times"]) - 2) for r in rows]  # from epoch 2 on: no warm-up
    evals = [r["wall"] - r["times"][-1] for r in rows]
    setups = [r["times"][0] for r in rows]
    trial = statistics.mean(setups) + typical * statistics.mean(epochs) + statistics.mean(evals)
    return {"workers": workers, "epoch_s": statistics.mean(epochs), "eval_s": statistics.mean(evals), "setup_s": statistics.mean(setups),
            "trial_s": trial, "trials_per_hour": workers * 3600 / trial, "util_mean": statistics.mean(util) if util else math.nan,
            "util_busy": statistics.mean(util[len(util) // 10 :]) if util else math.nan, "memory_mib": max(memory) if memory else math.nan,
            "wall_s": wall, "statuses": sorted({r["status"] for r in rows})}


def host_syncs(config: TrainConfig) -> dict:
    """Sync-like calls per training step over `config.epochs` epochs of fit (the evaluation left out)."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])

    class Done(Exception):
        pass

    def stop(epoch: int, _value: float) -> None:  # report may raise: fit stops before its evaluation
        if epoch == config.epochs:
            raise Done

    try:  # warm-up outside the trace
        fit(config, report=stop)
    except Done:
        pass
    prof.start()
    try:
        fit(config, report=stop)
    except Done:
        prof.stop()
    counts = {name: 0 for name in SYNC_EVENTS}
    for event in prof.key_averages():
        if event.key in counts:
            counts[event.key] += event.count
    steps = config.epochs * math.ceil(config.data.n_train / config.batch_size)
    return {"steps": steps, "epochs": config.epochs, **{k: (v, v / steps) for k, v in counts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="damped_double_pendulum")
    parser.add_argument("--form", default="structured")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--epochs", type=int, default=3, help="epochs each process trains (the epoch time is read from epoch 2 on)")
    parser.add_argument("--profile", action="store_true", help="also count host syncs per training step")
    parser.add_argument("--device", default="cuda", help="cpu only to try the script out")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides (YAML values)")
    args = parser.parse_args()
    base, raw = load_study(args.spec)
    import yaml

    config = typical_config(base, raw, args.device, args.form).with_flat({"epochs": args.epochs})
    if args.overrides:
        config = config.with_flat({k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.overrides)})
    typical = typical_epochs(base, raw)
    load_data(config.data, config.data_seed)  # generated once, before the workers share the cache
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu"
    print(f"{name}; torch {torch.__version__}; {args.spec}, {args.form} {config.model.hidden}×{config.model.depth}, "
          f"batch {config.batch_size}, {config.data.n_train} states, optimizer {config.optimizer.name}; trial = {typical} epochs", flush=True)
    if args.profile:
        syncs = host_syncs(config.with_flat({"epochs": 2}))
        print(f"host syncs over {syncs['epochs']} training epochs = {syncs['steps']} steps (count, per step): "
              + ", ".join(f"{k} {syncs[k][0]} ({syncs[k][1]:.3f})" for k in SYNC_EVENTS), flush=True)
    print("| workers | epoch s | eval s | setup s | trial s (modelled) | trials/h per GPU | GPU util % mean (after first 10 %) | GPU memory MiB | statuses |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |", flush=True)
    for n in args.workers:
        r = throughput(config, n, typical)
        print(f"| {n} | {r['epoch_s']:.2f} | {r['eval_s']:.1f} | {r['setup_s']:.1f} | {r['trial_s']:.0f} | {r['trials_per_hour']:.1f} | "
              f"{r['util_mean']:.0f} ({r['util_busy']:.0f}) | {r['memory_mib']:.0f} | {','.join(r['statuses'])} |", flush=True)


if __name__ == "__main__":
    main()
