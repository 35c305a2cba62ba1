"""The study commands of `dlnn`: launch, work, status, export, refine, report, verify, dashboard, run.
Each entry of COMMANDS is (configure(parser), run(args) -> exit code); main.py merges them."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from dlnn_core.device import parse_device
from dlnn_core.errors import ConfigError, shorten

from ..errors import UsageError
from ..store.urls import DEFAULT_ARTIFACTS, ENV_ARTIFACTS, ENV_STORAGE, argument, artifacts_url, redact, storage_url


def _storage(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage", default=None, metavar="URL",
                   help=f"SQLAlchemy URL (e.g. postgresql://user@host/db) or grpc://host:port; default ${ENV_STORAGE}, else sqlite:///dlnn.db")


def _artifacts(p: argparse.ArgumentParser, what: str = "shared by workers and the dashboard") -> None:
    p.add_argument("--artifacts", default=None, metavar="STORE", type=argument,
                   help=f"artifact store {what}: a directory or s3://BUCKET/PREFIX (endpoint and credentials from the "
                        f"AWS_* environment); default ${ENV_ARTIFACTS}, else ./{DEFAULT_ARTIFACTS}")


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{shorten(repr(text))} is not a positive integer")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of seconds")
    return value


def _port(text: str) -> int:
    """A TCP port, checked before anything (the artifacts folder included) is created."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{shorten(repr(text))} is not a port number (1-65535)")
    return value


def _device(text: str) -> str:
    try:
        return str(parse_device(text, "--device"))
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(f"{shorten(repr(text))}: expected {exc.allowed}") from None


# ------------------------------------------------------------------------------------ launch


def configure_launch(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="study spec (studies/*.toml)")
    p.add_argument("--name", default=None, help="study name (default: the spec's study.name)")
    p.add_argument("--update", action="store_true", help="replace the stored spec of an existing study with this one (a changed "
                                                         "data file only while none of its trials has started)")
    p.add_argument("--from", dest="from_study", default=None, metavar="OLD",
                   help="start a new study that first runs the best configs of study OLD")
    p.add_argument("--top", type=positive_int, default=3, help="with --from: how many of OLD's best configs (default 3)")
    _storage(p)
    _artifacts(p, "that receives the spec's data.file (once, by its sha256) and the trials' artifacts")


def run_launch(args: argparse.Namespace) -> int:
    """Create a study from a spec (idempotent), enqueue its baselines, print how to add workers."""
    from ..study.launch import launch
    from ..spec.schema import load_spec

    spec = load_spec(args.spec)
    launch(spec, storage_url(args.storage), name=args.name, update=args.update, from_study=args.from_study, top=args.top,
           artifacts=artifacts_url(args.artifacts))
    return 0


# -------------------------------------------------------------------------------------- work


def configure_work(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name (see `dlnn status`)")
    p.add_argument("--n-trials", type=positive_int, default=None, help="stop after this many trials of this worker")
    p.add_argument("--timeout", type=_seconds, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--device", type=_device, default=None, help="auto, cpu or cuda:K (default: the spec's)")
    p.add_argument("--jobs", type=positive_int, default=1, help="trials in parallel threads of this process (default 1)")
    p.add_argument("--pack", type=positive_int, default=1,
                   help="ask for up to K trials at once and train those that share a structure as one batched program (default 1)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed of this worker (default: random, unique per worker)")
    p.add_argument("--no-plots", action="store_true", help="skip the rollout plot artifact")
    _storage(p)
    _artifacts(p)


def run_work(args: argparse.Namespace) -> int:
    """Pull and train trials until the study's budget (counted across all workers) is used."""
    from ..ops.gpu_slot import SlotError, claim_gpu_slot

    url = storage_url(args.storage)
    try:  # before torch initializes CUDA: pick a free (GPU, slot) and pin CUDA_VISIBLE_DEVICES
        claim_gpu_slot(url, args.device or "auto")
    except SlotError as exc:
        raise UsageError(f"GPU slot: {exc}") from None
    from ..study.worker import run_worker

    return run_worker(url, args.study, n_trials=args.n_trials, timeout=args.timeout, device=args.device,
                      jobs=args.jobs, seed=args.seed, artifacts=artifacts_url(args.artifacts), threads=args.threads,
                      plots=not args.no_plots, pack=args.pack)


# ------------------------------------------------------------------------------------ status


def configure_status(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", nargs="?", default=None, help="study name (default: list the studies)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    _storage(p)


def run_status(args: argparse.Namespace) -> int:
    """Trials by state, best value and config, running trials, recent failures."""
    url = storage_url(args.storage)
    if args.study is None:
        return _list_studies(url, args.json)
    from ..study.status import format_status, status

    s = status(url, args.study)
    print(json.dumps(s, indent=2, default=str) if args.json else format_status(s))
    return 0


def _list_studies(url: str, as_json: bool) -> int:
    from optuna.trial import TrialState

    from ..store.storage import close_storage, open_storage

    storage = open_storage(url)
    try:
        rows = []
        for s in storage.get_all_studies():
            trials = storage.get_all_trials(storage.get_study_id_from_name(s.study_name), deepcopy=False)
            done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
            running = sum(t.state == TrialState.RUNNING for t in trials)
            rows.append({"study": s.study_name, "trials": len(trials), "finished": done, "running": running})
    finally:
        close_storage(storage)
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no studies in {redact(url)}; start one with `dlnn launch SPEC`")
    else:
        for r in rows:
            print(f"{r['study']}: {r['trials']} trials, {r['finished']} finished, {r['running']} running")
    return 0


# ------------------------------------------------------------------------------------ export


def configure_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name")
    p.add_argument("--top", type=positive_int, default=5, help="how many of the best trials (default 5)")
    p.add_argument("--out", type=Path, default=Path("exports"), help="output directory (default exports/)")
    p.add_argument("--format", choices=("yaml", "json"), default="yaml", help="config file format (default yaml)")
    p.add_argument("--per", default=None, metavar="SETTING",
                   help="the --top best for each value of a setting, e.g. --per optimizer.name (best config per optimizer)")
    _storage(p)
    p.add_argument("--artifacts", default=None, metavar="STORE", type=argument,
                   help=f"the study's artifact store (default ${ENV_ARTIFACTS}): checks that it holds the dataset the configs pin "
                        "and names it in the retrain command")


def run_export(args: argparse.Namespace) -> int:
    """Write the K best configs (files `dlnn train` accepts) with metrics, provenance and a summary table."""
    from ..study.export import export

    result = export(storage_url(args.storage), args.study, top=args.top, out=args.out, fmt=args.format, per=args.per,
                    artifacts=artifacts_url(args.artifacts, default=None))
    print(result.table)
    print(f"\nwrote {len(result.items)} configs to {result.folder}/ (summary.md, summary.csv, *.meta.{args.format})")
    for note in result.notes:
        print(note)
    print(f"retrain the best: {result.retrain(result.items[0])}")
    return 0


# ------------------------------------------------------------------------------------ refine


def configure_refine(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="a finished (or running) study to refine")
    p.add_argument("--around", type=positive_int, default=5, help="how many of the best trials span the grid (default 5)")
    p.add_argument("--points", type=positive_int, default=3, help="grid values per numeric setting (default 3, plus the best value)")
    p.add_argument("--trial", type=int, default=None, help="refine around this trial instead of the best")
    p.add_argument("--name", default=None, help="name of the new study (default STUDY-refine)")
    p.add_argument("--max-trials", type=positive_int, default=100, help="refuse grids larger than this (default 100)")
    _storage(p)


def run_refine(args: argparse.Namespace) -> int:
    """Launch a grid study around the best region of STUDY, seeded with its best trials."""
    from ..study.refine import refine

    spec, _ = refine(storage_url(args.storage), args.study, around=args.around, points=args.points, new_name=args.name,
                     max_trials=args.max_trials, trial=args.trial)
    for p in spec.space:
        if p.kind != "fixed":
            print(f"  {p.key}: {', '.join(f'{v:.4g}' if isinstance(v, float) else str(v) for v in p.grid_values())}")
    return 0


# ------------------------------------------------------------------------------------ report


def configure_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="study name")
    p.add_argument("--out", type=Path, default=Path("reports"), help="output directory (default reports/): writes OUT/STUDY/report.html, "
                                                                     "report.md and figures/")
    p.add_argument("--no-save", action="store_true", help="do not save the report into the study (dashboard note and figure artifacts)")
    p.add_argument("--json", action="store_true", help="print the report's record (every number and graded claim) as JSON; writes no files")
    p.add_argument("--against", default=None, metavar="OTHER",
                   help="compare every claim with another report's: a study name (in --against-storage, default the same storage) "
                        "or a JSON file from `dlnn report --json`; writes OUT/STUDY/against-OTHER.md")
    p.add_argument("--against-storage", default=None, metavar="URL", help="the storage of --against's study (default: --storage)")
    _storage(p)
    _artifacts(p)


def run_report(args: argparse.Namespace) -> int:
    """Write what a study answers, graded by how sure (claims, per choice, lr bands, d0, interactions, importances, failures)."""
    from ..study.report import against, record_of, report
    from ..study.report.compare import to_markdown
    from ..study.report.record import to_json
    from ..spec.names import folder_name, study_folder

    url = storage_url(args.storage)
    if args.json:
        print(json.dumps(to_json(record_of(url, args.study)), indent=1))
        return 0
    progress = lambda m: print(f"  {m} ...", file=sys.stderr, flush=True)  # noqa: E731  (stderr: stdout stays the answer)
    written = report(url, args.study, args.out, artifacts=artifacts_url(args.artifacts), save_to_study=not args.no_save, log=progress)
    print(written.headline)
    print(f"\nreport: {written.html}  (Markdown: {written.markdown})"
          + ("; also the study's note in the dashboard" if written.note_saved else ""))
    if args.against:
        other_url = storage_url(args.against_storage) if args.against_storage else url
        comparison = against(written.record, args.against, other_url)
        path = study_folder(args.out, args.study) / f"against-{folder_name(Path(args.against).stem)}.md"
        path.write_text(to_markdown(comparison))
        print(f"\nagainst {args.against}: {comparison.contradictions} contradiction(s) "
              f"({comparison.established_contradicted} involving an established claim) in {len(comparison.rows)} claims; {path}")
    return 0


# ------------------------------------------------------------------------------------ verify


def configure_verify(p: argparse.ArgumentParser) -> None:
    p.add_argument("study", help="a study with completed trials")
    p.add_argument("--top", type=positive_int, default=3, help="how many of the best configs (default 3)")
    p.add_argument("--seeds", type=positive_int, default=3, help="fresh seeds per config (default 3)")
    p.add_argument("--reference", action="append", default=[], metavar="PRESET",
                   help="also retrain this preset (e.g. published_dlnn) on the study's data and epochs with the same seeds (repeatable)")
    p.add_argument("--per", default=None, metavar="SETTING",
                   help="instead of the top configs: the best config of each choice of SETTING (e.g. optimizer.name), each "
                        "with its own tuned lr, retrained with --seeds fresh seeds as study STUDY-per-SETTING")
    p.add_argument("--workers", type=int, default=0, help="also run this many local workers on it until it is done (default 0: "
                                                           "launch only, then `dlnn work STUDY-verify` anywhere)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads per local worker (default: cores / workers)")
    _storage(p)
    _artifacts(p)


def run_verify(args: argparse.Namespace) -> int:
    """Retrain the best configs (or with --per, each choice's best) with fresh seeds; the report ranks them by mean over seeds."""
    from ..study.verify import verify, verify_per

    url = storage_url(args.storage)
    if args.per and args.reference:
        raise UsageError("--per and --reference: a reference preset is retrained by `dlnn verify STUDY --reference`, not with --per")
    if args.per:
        child, _ = verify_per(url, args.study, args.per, seeds=args.seeds)
    else:
        child, _ = verify(url, args.study, top=args.top, seeds=args.seeds, references=tuple(args.reference))
    if args.workers > 0:
        codes = _local_workers(url, child, args.workers, args.threads, artifacts_url(args.artifacts))
        if any(codes):
            print(f"workers exited with {codes}")
            return 1
        print(f"done; see the ranking: dlnn report {args.study}")
    return 0


def _local_workers(url: str, name: str, n: int, threads: int | None, artifacts: str, device: str | None = None,
                   timeout: float | None = None, seed: int | None = None) -> list[int]:
    """Run n worker processes on study `name` until its budget is used; returns their exit codes.
    With `seed`, worker i draws with sampler seed `seed + i`, so a rerun can pick other draws on purpose."""
    threads = threads or max(1, (os.cpu_count() or 1) // n)
    command = [sys.executable, "-m", "dlnn_studies.cli.main", "work", name, "--threads", str(threads), "--artifacts", str(artifacts)]
    env = {**os.environ, ENV_STORAGE: url}  # not on the command line, where `ps` would show a password
    if device:
        command += ["--device", device]
    if timeout:
        command += ["--timeout", str(timeout)]
    print(f"starting {n} workers on {name} ({threads} torch threads each); Ctrl-C stops them after the current epoch")
    # Own sessions: a terminal Ctrl-C reaches only this process, which forwards exactly one SIGTERM
    # per signal, so the first stops the workers gracefully and a second one stops them at once.
    procs = [subprocess.Popen(command + ([] if seed is None else ["--seed", str(seed + i)]), start_new_session=True, env=env)
             for i in range(n)]

    def forward(signum, _frame):
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return [proc.wait() for proc in procs]
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


# --------------------------------------------------------------------------------- dashboard


def configure_dashboard(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1; others need "
                                                       "DLNN_DASHBOARD_USER and DLNN_DASHBOARD_PASSWORD)")
    p.add_argument("--port", type=_port, default=8080, help="port, 1-65535 (default 8080)")
    _storage(p)
    _artifacts(p)


def run_dashboard(args: argparse.Namespace) -> int:
    """Serve optuna-dashboard on the same storage and artifact store."""
    from ..ops.dashboard import serve

    return serve(storage_url(args.storage), args.host, args.port, artifacts_url(args.artifacts))


# --------------------------------------------------------------------------------------- run


def configure_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("spec", type=Path, help="study spec (studies/*.toml)")
    p.add_argument("--workers", type=positive_int, default=2, help="local worker processes (default 2)")
    p.add_argument("--name", default=None, help="study name (default: the spec's)")
    p.add_argument("--top", type=positive_int, default=3, help="configs to export at the end (default 3)")
    p.add_argument("--out", type=Path, default=Path("exports"), help="export directory (default exports/)")
    p.add_argument("--reports", type=Path, default=Path("reports"), help="report directory (default reports/)")
    p.add_argument("--device", type=_device, default=None, help="device for every worker (default: the spec's)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads per worker (default: cores / workers)")
    p.add_argument("--timeout", type=_seconds, default=None, help="stop the workers starting trials after this many seconds")
    p.add_argument("--seed", type=int, default=None, help="sampler seed: worker i gets SEED + i (default: random, unique per worker)")
    _storage(p)
    _artifacts(p)


def run_run(args: argparse.Namespace) -> int:
    """Launch a study, run N local workers to its budget, then print its status and export the best configs."""
    from ..study.export import export
    from ..study.launch import launch
    from ..study.status import format_status, status
    from ..spec.schema import load_spec

    url = storage_url(args.storage)
    spec = load_spec(args.spec)
    launched = launch(spec, url, name=args.name, log=lambda m: None if m.startswith("  ") else print(m),
                      artifacts=artifacts_url(args.artifacts))
    name = launched.name
    codes = _local_workers(url, name, args.workers, args.threads, artifacts_url(args.artifacts), args.device, args.timeout,
                           args.seed)
    print()
    print(format_status(status(url, name)))
    if any(codes):
        print(f"\nworkers exited with {codes}")
    from ..study.report import report

    print("\nwriting the report:")
    written = report(url, name, args.reports, artifacts=artifacts_url(args.artifacts),
                     log=lambda m: print(f"  {m} ...", flush=True))
    print(f"\nwhat the study answers ({spec.metrics[0]}; each claim graded by how sure, see the report):")
    print(written.headline)
    print(f"\nreport:             {written.html}  (also the study's note in the dashboard)")
    try:
        result = export(url, name, top=args.top, out=args.out, artifacts=artifacts_url(args.artifacts))
    except UsageError as exc:
        print(f"\nnothing exported: {exc}")
        return 1
    print(f"\nbest configs (exported to {result.folder}/):")
    print(result.table)
    storage_flag = f" --storage {redact(url)}" if args.storage else ""
    print(f"\nretrain the best:   {result.retrain(result.items[0])}")
    print(f"check the winners:  dlnn verify {name} --top 3 --seeds 3 --workers {args.workers}{storage_flag}")
    print(f"open the dashboard: dlnn dashboard{storage_flag}   then http://127.0.0.1:8080/dashboard")
    return 0 if not any(codes) else 1


COMMANDS = {
    "launch": (configure_launch, run_launch),
    "work": (configure_work, run_work),
    "status": (configure_status, run_status),
    "export": (configure_export, run_export),
    "refine": (configure_refine, run_refine),
    "report": (configure_report, run_report),
    "verify": (configure_verify, run_verify),
    "dashboard": (configure_dashboard, run_dashboard),
    "run": (configure_run, run_run),
}
