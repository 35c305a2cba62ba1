"""Trials per hour of a real study: W unpacked workers against W workers with `--pack K`, same cores,
in one run. Each level launches a fresh copy of the spec (budget cut to `--trials`) on SQLite in a
temporary folder and runs W `dlnn work` processes (one torch thread each, worker i seeded SEED + i),
then reads the trials: wall time, trials per hour, outcomes, the best objective and how many distinct
model structures were trained. Last, the two studies' reports are compared claim by claim (the report's
`--against`): packing must not change the answers.

    flock /tmp/heavy.lock python benchmarks/packing_study.py [--spec pendulum_answers] [--trials 32] [--workers 2] [--pack 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import tomllib
from collections import Counter
from pathlib import Path

from dlnn_studies.study.pack import structural

ROOT = Path(__file__).resolve().parents[1]


def level(spec: str, trials: int, workers: int, pack: int, seed: int, folder: Path, limit_s: float, startup: int | None = None,
          refill: bool = True) -> dict:
    import optuna

    from dlnn_studies.spec.schema import parse_spec
    from dlnn_studies.study.launch import launch

    raw = tomllib.loads((ROOT / "studies" / f"{spec}.toml").read_text())
    raw["budget"]["trials"] = trials
    if startup is not None:  # the sampler's random start, so that a short run reaches TPE's own draws
        raw.setdefault("sampler", {})["n_startup_trials"] = startup
    parsed = parse_spec(raw, source=spec)
    url = f"sqlite:///{folder / 'study.db'}"
    launch(parsed, url, log=lambda m: None)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "DLNN_CACHE_DIR": str(folder / "cache"),
           "DLNN_PACK_REFILL": "1" if refill else "0"}
    cmd = [sys.executable, "-m", "dlnn_studies.cli.main", "work", parsed.name, "--storage", url, "--threads", "1", "--no-plots",
           "--artifacts", str(folder / "artifacts")]
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd + ["--seed", str(seed + i)] + (["--pack", str(pack)] if pack > 1 else []), env=env,
                              stdout=subprocess.DEVNULL, stderr=open(folder / f"w{i}.log", "w")) for i in range(workers)]
    try:
        for p in procs:
            p.wait(max(1.0, limit_s - (time.perf_counter() - start)))
    except subprocess.TimeoutExpired:
        pass  # the bound: what finished by now is counted, the rest is killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    wall = time.perf_counter() - start
    study = optuna.load_study(study_name=parsed.name, storage=url)
    done = study.get_trials(deepcopy=False)
    states = Counter(t.user_attrs.get("status") or t.state.name.lower() for t in done)
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE and t.values]
    logs = [(folder / f"w{i}.log").read_text() for i in range(workers)]
    packs = sum(log.count("as one pack") for log in logs)
    joined = sum(int(line.split()[-6]) for log in logs for line in log.splitlines() if line.endswith("joined a running pack"))
    structures = {tuple(sorted((k, v) for k, v in t.params.items() if structural(k))) for t in done if t.params}
    return {"pack": pack if refill or pack == 1 else f"{pack}, no refill", "wall_s": wall, "url": url, "name": parsed.name, "structures": len(structures), "finished": sum(t.state.is_finished() for t in done),
            "trials_per_hour": sum(t.state.is_finished() for t in done) * 3600 / wall, "states": dict(states), "packs": packs, "joined": joined,
            "best": min((t.values[0] for t in complete), default=float("nan"))}


def answers(rows: list[dict]) -> str:
    """The unpacked and packed studies' claims side by side: the tallies and any contradiction. Each
    record comes from `dlnn report --json`, the command a user runs, in its own process."""
    import json

    from dlnn_studies.study.report import compare as cmp
    from dlnn_studies.study.report.record import claims_from_json

    claims = []
    for r in rows:
        out = subprocess.run([sys.executable, "-m", "dlnn_studies.cli.main", "report", r["name"], "--storage", r["url"], "--json"],
                             capture_output=True, text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        claims.append(claims_from_json(json.loads(out.stdout)))
    c = cmp.compare("unpacked", claims[0], f"--pack {rows[1]['pack']}", claims[1])
    verdicts = Counter(row[4] for row in c.rows)
    lines = ["", "The two studies' answers (report claims matched by id, as `dlnn report A --against B`):", "",
             "| | " + " | ".join(c.tallies[0]) + " |", "|---|" + "---|" * len(c.tallies[0])]
    for name, tally in zip((c.a, c.b), c.tallies):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in tally.values()) + " |")
    lines += ["", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in sorted(verdicts.items())) + "."]
    lines += [f"- CONTRADICTS: {row[0]} ({row[2]} against {row[3]})" for row in c.rows if row[4] == cmp.CONTRADICTS]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="pendulum_answers")
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pack", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--startup", type=int, help="override the spec's [sampler] n_startup_trials")
    parser.add_argument("--limit-s", type=float, default=270.0, help="each level's bound; unfinished trials are not counted")
    parser.add_argument("--no-refill-level", action="store_true", help="also run packed without refill (DLNN_PACK_REFILL=0), before the refilled level")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--keep", type=Path, help="keep each level's study (DIR/pack-K/study.db) instead of a temporary folder")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="dlnn-packing-study-") as tmp:
        levels = [(1, True)] + ([(args.pack, False)] if args.no_refill_level else []) + [(args.pack, True)]
        for pack, refill in levels:
            folder = (args.keep or Path(tmp)) / (f"pack-{pack}" + ("" if refill else "-no-refill"))
            folder.mkdir(parents=True, exist_ok=False)
            rows.append(level(args.spec, args.trials, args.workers, pack, args.seed, folder, args.limit_s, args.startup, refill))
            print(rows[-1], flush=True)
        compared = answers([rows[0], rows[-1]])
    startup = "" if args.startup is None else f" (sampler n_startup_trials = {args.startup})"
    lines = [f"{args.spec}{startup}, a fresh study of {args.trials} trials per level, {args.workers} workers, seeds {args.seed}+i; "
             f"each level bounded at {args.limit_s:.0f} s.", "",
             "| --pack | wall s | finished trials | trials / h | packs started | trials that joined a running pack | distinct structures | best objective | outcomes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))
        lines.append(f"| {r['pack']} | {r['wall_s']:.0f} | {r['finished']} | {r['trials_per_hour']:.0f} | {r['packs']} | {r['joined']} | {r['structures']} | {r['best']:.3g} | {outcomes} |")
    lines += [""] + [f"Trials per hour, --pack {r['pack']} against unpacked: {r['trials_per_hour'] / rows[0]['trials_per_hour']:.2f}×."
                     for r in rows[1:]] + [compared]
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "a") as f:
            f.write("\n" + text + "\n")


if __name__ == "__main__":
    main()
