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


@dataclass(eq=False)
class _Call:
    config: Any
    report: Callable | None
    out_dir: Any
    metrics: tuple[str, ...] | None
    arrived: float = field(default_factory=time.monotonic)
    taken: bool = False
    done: bool = False
    result: Any = None
    error: BaseException | None = None


class PackedFit:
    """A `fit` for `worker.Objective` shared by `size` threads: calls that arrive within `gather_s` of
    the first waiting one (or as soon as `size` wait) are grouped by pack key and trained together;
    a config that packs with no other runs through `fit_fn` alone."""

    def __init__(self, size: int, *, gather_s: float = GATHER_S, fit_fn: Callable | None = None, fit_pack_fn: Callable | None = None,
                 log: Callable[[str], None] | None = None):
        if fit_fn is None:
            from dlnn_core.train import fit as fit_fn
        if fit_pack_fn is None:
            from dlnn_core.pack import fit_pack as fit_pack_fn
        self.size, self.gather_s, self.fit, self.fit_pack = size, gather_s, fit_fn, fit_pack_fn
        self.log = log or (lambda message: None)
        self._cond = threading.Condition()
        self._waiting: list[_Call] = []
        self.packs: list[int] = []  # the size of every group trained, in order (1: alone)

    def __call__(self, config, report=None, out_dir=None, metrics=None):
        call = _Call(config, report, out_dir, tuple(metrics) if metrics is not None else None)
        with self._cond:
            self._waiting.append(call)
            self._cond.notify_all()
        while True:
            with self._cond:
                if call.done:
                    break
                batch = None
                if self._waiting and (len(self._waiting) >= self.size or time.monotonic() >= self._waiting[0].arrived + self.gather_s):
                    batch, self._waiting = self._waiting[: self.size], self._waiting[self.size :]
                    for c in batch:
                        c.taken = True
                elif not call.taken:
                    self._cond.wait(max(0.01, self._waiting[0].arrived + self.gather_s - time.monotonic()) if self._waiting else 0.05)
                else:
                    self._cond.wait(1.0)
            if batch is not None:
                try:
                    self._run(batch)
                finally:
                    with self._cond:
                        self._cond.notify_all()
        if call.error is not None:
            raise call.error
        return call.result

    def _run(self, batch: list[_Call]) -> None:
        from dlnn_core.pack import pack_key

        groups: dict[Any, list[_Call]] = {}
        for i, call in enumerate(batch):
            # A packed trial's wall time is its pack's: a study that optimizes wall_time_s trains alone.
            key = pack_key(call.config) if "wall_time_s" not in (call.metrics or ()) else None
            groups.setdefault((key, call.metrics) if key is not None else ("alone", i), []).append(call)
        for calls in groups.values():
            self.packs.append(len(calls))
            try:
                if len(calls) == 1:
                    c = calls[0]
                    c.result = self.fit(c.config, report=c.report, out_dir=c.out_dir, metrics=c.metrics)
                else:
                    self.log(f"training {len(calls)} trials as one pack")
                    outcomes = self.fit_pack([c.config for c in calls], [c.report for c in calls], [c.out_dir for c in calls],
                                             metrics=calls[0].metrics)
                    for c, outcome in zip(calls, outcomes):
                        if isinstance(outcome, BaseException):
                            c.error = outcome
                        else:
                            c.result = outcome
            except BaseException as exc:  # the whole group failed (out of memory, a bug, an interrupt): every trial hears it
                for c in calls:
                    if c.result is None and c.error is None:
                        c.error = exc
            finally:
                for c in calls:
                    c.done = True


def structural(name: str) -> bool:
    """Whether the search parameter `name` (a dotted TrainConfig key) decides a trial's pack: all but
    the settings a trial of a pack sets for itself (`dlnn_core.pack.PER_TRIAL`)."""
    from dlnn_core.pack import PER_TRIAL

    return name.split(".")[0] not in PER_TRIAL


class SharedStructure(optuna.samplers.BaseSampler):
    """A sampler around the study's own: trials asked within `gather_s` of the first of a group, up
    to `size` of them, take that first trial's structural parameters (width, depth, batch size, …)
    and draw the rest from the study's sampler, so that a TPE search over many structures still
    fills packs. The sampler sees every trial as it would with `size` parallel workers."""

    def __init__(self, base, size: int, gather_s: float = GATHER_S):
        self.base, self.size, self.gather_s = base, size, gather_s
        self._guard = threading.Lock()
        self._groups: dict[int, dict[str, Any]] = {}  # trial number -> its group
        self._open: dict[str, Any] | None = None

    def _group(self, number: int) -> dict[str, Any]:
        with self._guard:
            group = self._groups.get(number)
            if group is None:
                now = time.monotonic()
                if self._open is None or self._open["members"] >= self.size or now > self._open["opened"] + self.gather_s:
                    self._open = {"opened": now, "members": 0, "values": {}}
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
