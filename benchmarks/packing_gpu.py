"""Packed trials on one GPU: damped_double_pendulum's typical trial (free-form L, 320×3 swish, batch
512, 64 steps per epoch of its 32,768 states), packed K trials in one process against 8 unpacked
workers (processes) on the same card, in one run. NOT RUN YET: no GPU was available when it was written.

    python benchmarks/packing_gpu.py --device cuda [--ks 1,8,16,32,64] [--steps 20] [--out benchmarks/results/packing_gpu.md]
    python benchmarks/packing_gpu.py --dry-run     # the same code paths on the CPU, tiny, to check the script

It measures, for each K: seconds per packed step (all K trials), GPU memory per trial (peak allocated
/ K), host syncs per step (CUDA synchronize/event-wait calls and device-to-host copies in a profiler
trace of one step, and torch.cuda's sync debug mode), whether the packed step (forward, the
Euler–Lagrange double backward, Adam with capturable=True) can be captured as a CUDA graph and its
replay time, and training-only trials per hour = 3600 / (steps per trial × seconds per step / K),
with steps per trial = 64 × epochs (150, the spec's, unpruned: an upper bound on the work). The
8-worker figure runs 8 processes of `fit`'s step on the same card at once and counts their steps.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import time
from pathlib import Path

import torch

from dlnn_core.losses import LOSSES

import packing  # noqa: E402  (benchmarks/packing.py: the typical trials and member set-up)

TRIAL = packing.TYPICAL["damped_double_pendulum"]
STEPS_PER_EPOCH, EPOCHS = 64, 150


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def packed_setup(k: int, device: str, flat: dict, capturable: bool):
    from dlnn_core.pack import packed_model

    batch = flat["batch_size"]
    members = packing._members(flat, k, device, 4 * batch)
    if capturable:  # a CUDA graph needs the optimizer's step count on the device
        for m in members:
            m.optimizer = torch.optim.Adam(m.params, lr=1e-3, capturable=True)
    q, v, a = packing._states(flat, 4 * batch, device)
    return members, packed_model([m.model for m in members]), (q, v, a)


def time_packed(k: int, steps: int, device: str, flat: dict) -> dict:
    from dlnn_core.pack import train_step

    members, shell, (q, v, a) = packed_setup(k, device, flat, capturable=False)
    batch = flat["batch_size"]
    g = torch.Generator(device=device).manual_seed(0)
    idx = lambda: torch.stack([torch.randperm(len(q), generator=g, device=device)[:batch] for _ in members])  # noqa: E731
    for _ in range(3):
        train_step(shell, members, q, v, a, idx())
    _sync(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        train_step(shell, members, q, v, a, idx())
    _sync(device)
    step_s = (time.perf_counter() - start) / steps
    out = {"k": k, "step_s": step_s, "trials_per_hour": 3600 / (STEPS_PER_EPOCH * EPOCHS * step_s / k)}
    if device.startswith("cuda"):
        out["mem_per_trial_mib"] = torch.cuda.max_memory_allocated() / k / 2**20
        out.update(count_syncs(lambda: train_step(shell, members, q, v, a, idx()), device))
    return out


def count_syncs(step, device: str) -> dict:
    """Host syncs in one step: profiler events that block the host, and sync-debug-mode warnings."""
    from torch.profiler import ProfilerActivity, profile

    names = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy", "cudaMemcpyAsync")
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        _sync(device)
    counts = {n: 0 for n in names}
    for e in prof.events():
        if e.name in counts:
            counts[e.name] += 1
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    counts["sync_debug_warnings"] = sum("synchroniz" in str(w.message) for w in caught)
    counts["sync_debug_first"] = next((str(w.message)[:120] for w in caught if "synchroniz" in str(w.message)), "")
    return counts


def try_graph(k: int, steps: int, device: str, flat: dict) -> dict:
    """Capture forward + backward + Adam(capturable) for K trials as one CUDA graph on static inputs
    (the minibatch indices are copied into a static buffer before each replay); replay time per step."""
    members, shell, (q, v, a) = packed_setup(k, device, flat, capturable=True)
    batch, loss = flat["batch_size"], LOSSES["mse"]
    static_idx = torch.zeros(k, batch, dtype=torch.long, device=device)
    params = [p for m in members for p in m.params]

    def step():
        pred = shell(q[static_idx].view(k * batch, -1), v[static_idx].view(k * batch, -1)).view(k, batch, -1)
        losses = torch.vmap(loss)(pred, a[static_idx])
        losses.sum().backward()
        for m in members:
            m.optimizer.step()
        return losses

    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):  # warm-up on a side stream, as torch.cuda.graphs asks
                for p in params:
                    p.grad = None
                step()
        torch.cuda.current_stream().wait_stream(side)
        for p in params:  # grads must exist as static tensors before capture, then be zeroed in place
            p.grad = torch.zeros_like(p)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for p in params:
                p.grad.zero_()
            step()
        g = torch.Generator(device=device).manual_seed(0)
        _sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            static_idx.copy_(torch.stack([torch.randperm(len(q), generator=g, device=device)[:batch] for _ in members]))
            graph.replay()
        _sync(device)
        return {"k": k, "graph": "captured", "graph_step_s": (time.perf_counter() - start) / steps}
    except Exception as error:  # noqa: BLE001 (what fails to capture is the finding)
        return {"k": k, "graph": f"failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"}


def _unpacked_worker(args) -> int:
    """One unpacked worker: `fit`'s step on one model for `seconds`; returns its step count."""
    seed, seconds, device, flat, barrier = args
    torch.manual_seed(seed)
    m = packing._members(flat, 1, device, 4 * flat["batch_size"])[0]
    q, v, a = packing._states(flat, 4 * flat["batch_size"], device)
    loss_fn, batch = LOSSES["mse"], flat["batch_size"]

    def step():
        idx = torch.randint(len(q), (batch,), device=device)
        loss = loss_fn(m.model(q[idx], v[idx]), a[idx])
        m.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        m.optimizer.step()

    for _ in range(3):
        step()
    _sync(device)
    barrier.wait()
    end, count = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        step()
        count += 1
    _sync(device)
    return count


def unpacked_workers(n: int, seconds: float, device: str, flat: dict) -> dict:
    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        barrier = manager.Barrier(n)
        with ctx.Pool(n) as pool:
            counts = pool.map(_unpacked_worker, [(i, seconds, device, flat, barrier) for i in range(n)])
    steps_per_s = sum(counts) / seconds
    return {"workers": n, "steps_per_s": steps_per_s, "trials_per_hour": 3600 * steps_per_s / (STEPS_PER_EPOCH * EPOCHS)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--ks", default="1,8,16,32,64")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--worker-seconds", type=float, default=30.0)
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: checks the script, measures nothing")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    flat = dict(TRIAL)
    if args.dry_run:
        args.device, args.ks, args.steps, args.workers, args.worker_seconds = "cpu", "1,2", 1, 2, 1.0
        flat.update({"model.hidden": 16, "batch_size": 16})
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run on a GPU machine, or --dry-run to check the script")
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    lines = [f"# Packed trials on {name}: damped_double_pendulum's typical trial", "",
             f"torch {torch.__version__}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    workers = unpacked_workers(args.workers, args.worker_seconds, args.device, flat)
    lines += [f"{args.workers} unpacked workers on the card: {workers['steps_per_s']:.1f} steps/s, "
              f"{workers['trials_per_hour']:.0f} trials per hour (training only, {EPOCHS} epochs × {STEPS_PER_EPOCH} steps).", "",
              "| K | s per packed step | trials per hour | × the workers | MiB per trial | syncs (profiler) | sync-debug warnings | CUDA graph | graph s per step |",
              "|---|---|---|---|---|---|---|---|---|"]
    for k in (int(x) for x in args.ks.split(",")):
        r = time_packed(k, args.steps, args.device, flat)
        g = try_graph(k, args.steps, args.device, flat) if args.device.startswith("cuda") else {"graph": "n/a (cpu)"}
        syncs = sum(r.get(n, 0) for n in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"))
        row = (f"| {k} | {r['step_s']:.4f} | {r['trials_per_hour']:.0f} | {r['trials_per_hour'] / workers['trials_per_hour']:.1f} | "
               f"{r.get('mem_per_trial_mib', float('nan')):.0f} | {syncs} | {r.get('sync_debug_warnings', '')} | {g['graph']} | "
               f"{g.get('graph_step_s', float('nan')):.4f} |")
        print(row, flush=True)
        lines.append(row)
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out and not args.dry_run:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
