"""`dlnn work --pack K`: K worker threads (Optuna's n_jobs) each ask for a trial as usual, with its own
heartbeat, records, pruning, checkpoint and re-queue on SIGTERM; their fits meet here, and the trials
that can share one program (`dlnn_core.pack.pack_key`) train as one `fit_pack`. Each thread gets back
its own trial's result or the exception its report raised, so the Objective records every trial of a
pack as it records one trained alone."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import optuna

# How long the first trial waits for others to join its pack (DLNN_PACK_GATHER_S: wider where asks are slow,
# e.g. a busy storage or an overloaded host, so a pack's trials still meet).
GATHER_S = float(os.environ.get("DLNN_PACK_GATHER_S", "2.0"))
# How many consecutive trials of a worker share one structure (DLNN_PACK_SHARE; default: the pack size).
SHARE = int(os.environ.get("DLNN_PACK_SHARE", "0"))
# Whether a running pack takes new trials where members left (DLNN_PACK_REFILL=0: no, for comparisons).
REFILL = os.environ.get("DLNN_PACK_REFILL", "1") != "0"


@dataclass(eq=False)
class _Call:
    config: Any
    report: Callable | None
    out_dir: Any
    metrics: tuple[str, ...] | None
    key: Any = None  # what it packs by (None: it trains alone)
    arrived: float = field(default_factory=time.monotonic)
    taken: bool = False
    done: bool = False
    result: Any = None
    error: BaseException | None = None


@dataclass(eq=False)
class _Running:
    """A pack in training that takes new trials of its structure where members left."""

    key: Any
    room: int  # free slots not yet promised to a waiting call
    pending: list[_Call] = field(default_factory=list)  # calls promised a slot, joining at its next epoch's end


class PackedFit:
    """A `fit` for `worker.Objective` shared by `size` threads: calls that arrive within `gather_s` of
    the first waiting one (or as soon as `size` wait) are grouped by pack key and trained together,
    each group by a driver thread of its own; a config that packs with no other runs through `fit_fn`
    alone. Each trial's outcome reaches its thread as the trial leaves, and while a pack trains, a
    new call of its structure takes a free slot at the pack's next epoch (`refill`)."""

    def __init__(self, size: int, *, gather_s: float = GATHER_S, fit_fn: Callable | None = None, fit_pack_fn: Callable | None = None,
                 log: Callable[[str], None] | None = None, refill: bool | None = None):
        if fit_fn is None:
            from dlnn_core.train import fit as fit_fn
        if fit_pack_fn is None:
            from dlnn_core.pack import fit_pack as fit_pack_fn
        self.size, self.gather_s, self.fit, self.fit_pack = size, gather_s, fit_fn, fit_pack_fn
        self.refill = REFILL if refill is None else refill
        self.log = log or (lambda message: None)
        self._cond = threading.Condition()
        self._waiting: list[_Call] = []
        self._running: list[_Running] = []
        self.packs: list[int] = []  # the size of every group trained, in order (1: alone)
        self.joined = 0  # trials that joined a running pack

    def __call__(self, config, report=None, out_dir=None, metrics=None):
        from dlnn_core.pack import pack_key

        call = _Call(config, report, out_dir, tuple(metrics) if metrics is not None else None)
        # A packed trial's wall time is its pack's: a study that optimizes wall_time_s trains alone.
        key = pack_key(config) if "wall_time_s" not in (call.metrics or ()) else None
        call.key = (key, call.metrics) if key is not None else None
        with self._cond:
            running = next((r for r in self._running if r.key == call.key and r.room > 0), None) if call.key else None
            if running is not None:
                running.room -= 1
                running.pending.append(call)
                call.taken = True
            else:
                self._waiting.append(call)
            self._cond.notify_all()
            while not call.done:
                if not call.taken and self._waiting and (len(self._waiting) >= self.size
                                                         or time.monotonic() >= self._waiting[0].arrived + self.gather_s):
                    batch, self._waiting = self._waiting[: self.size], self._waiting[self.size :]
                    groups: dict[Any, list[_Call]] = {}
                    for i, c in enumerate(batch):
                        c.taken = True
                        groups.setdefault(c.key if c.key is not None else ("alone", i), []).append(c)
                    for calls in groups.values():
                        threading.Thread(target=self._drive, args=(calls,), name="dlnn-pack", daemon=True).start()
                elif not call.taken:
                    self._cond.wait(max(0.01, self._waiting[0].arrived + self.gather_s - time.monotonic()) if self._waiting else 0.05)
                else:
                    self._cond.wait(1.0)
        if call.error is not None:
            raise call.error
        return call.result

    def _drive(self, calls: list[_Call]) -> None:
        """One group's driver thread: `fit` for a call that packs with nothing, else one pack that
        takes joiners while it trains; each trial's outcome reaches its thread as the trial leaves."""
        running = None
        try:
            if calls[0].key is None or (len(calls) == 1 and not self.refill):  # a pack of one pays only if others join it
                self.packs.append(1)
                c = calls[0]
                c.result = self.fit(c.config, report=c.report, out_dir=c.out_dir, metrics=c.metrics)
                self._finish(c)
                return
            running = _Running(calls[0].key, self.size - len(calls))
            with self._cond:
                self._running.append(running)
            self._train(calls, running)
        except BaseException as exc:  # the whole group failed (out of memory, a bug, an interrupt): every trial hears it
            for c in calls:
                if not c.done:
                    c.error = exc
                    self._finish(c)
        finally:
            if running is not None:
                self._close(running)

    def _train(self, calls: list[_Call], running: _Running) -> None:
        """One pack: `calls` to start with, then the calls that join where members left."""
        from dlnn_core.pack import Joiner

        def refill(free: int) -> list[Joiner]:
            with self._cond:  # no waiting: a call that arrives during the next epoch joins at its end
                taken, running.pending = running.pending[:free], running.pending[free:]
            if taken:
                self.joined += len(taken)
                self.log(f"{len(taken)} trial(s) joined a running pack")
            calls.extend(taken)
            return [Joiner(c.config, c.report, c.out_dir) for c in taken]

        def finished(index: int, outcome) -> None:
            c = calls[index]
            if isinstance(outcome, BaseException):
                c.error = outcome
            else:
                c.result = outcome
            with self._cond:
                running.room += 1
            self._finish(c)

        self.packs.append(len(calls))
        if len(calls) > 1:
            self.log(f"training {len(calls)} trials as one pack")
        outcomes = self.fit_pack([c.config for c in calls], [c.report for c in calls], [c.out_dir for c in calls], metrics=calls[0].metrics,
                                 size=self.size, refill=refill if self.refill else None, finished=finished)
        for c, outcome in zip(list(calls), outcomes):  # any outcome `finished` did not hand over
            if not c.done:
                finished(calls.index(c), outcome)

    def _finish(self, call: _Call) -> None:
        with self._cond:
            call.done = True
            self._cond.notify_all()

    def _close(self, running: _Running) -> None:
        """The pack is done: calls promised a slot that it never took go back to gather with the rest."""
        with self._cond:
            self._running.remove(running)
            for c in running.pending:
                c.taken = False
            self._waiting[:0] = running.pending
            self._cond.notify_all()


def structural(name: str) -> bool:
    """Whether the search parameter `name` (a dotted TrainConfig key) decides a trial's pack: all but
    the settings a trial of a pack sets for itself (`dlnn_core.pack.PER_TRIAL`)."""
    from dlnn_core.pack import PER_TRIAL

    return name.split(".")[0] not in PER_TRIAL


class SharedStructure(optuna.samplers.BaseSampler):
    """A sampler around the study's own: each run of `share` (default `size`) consecutive trials
    this worker asks takes the structural parameters (width, depth, batch size, …) of the run's
    first trial and draws the rest from the study's sampler, so that a TPE search over many
    structures still fills packs, and a pack's freed slots find trials of its structure. The
    sampler sees every trial as it would with `size` parallel workers."""

    def __init__(self, base, size: int, share: int | None = None):
        self.base, self.size, self.share = base, size, share or SHARE or size
        self._guard = threading.Lock()
        self._groups: dict[int, dict[str, Any]] = {}  # trial number -> its group
        self._open: dict[str, Any] | None = None

    def _group(self, number: int) -> dict[str, Any]:
        with self._guard:
            group = self._groups.get(number)
            if group is None:
                if self._open is None or self._open["members"] >= self.share:
                    self._open = {"members": 0, "values": {}}
                group = self._groups[number] = self._open
                group["members"] += 1
            return group

    def _share(self, number: int, name: str, value: Any, distribution) -> Any:
        """The group's value of `name` where the group's first draw of it had this same distribution; else `value`."""
        group = self._group(number)
        with self._guard:
            shared, where = group["values"].setdefault(name, (value, distribution))
        return shared if where == distribution else value

    def infer_relative_search_space(self, study, trial):
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        params = self.base.sample_relative(study, trial, search_space)
        return {name: self._share(trial.number, name, value, search_space[name]) if structural(name) else value
                for name, value in params.items()}

    def sample_independent(self, study, trial, param_name, param_distribution):
        value = self.base.sample_independent(study, trial, param_name, param_distribution)
        return self._share(trial.number, param_name, value, param_distribution) if structural(param_name) else value

    def before_trial(self, study, trial):
        return self.base.before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        with self._guard:
            self._groups.pop(trial.number, None)
        return self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()
