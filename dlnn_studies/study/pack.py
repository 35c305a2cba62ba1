"""`dlnn work --pack K`: K worker threads (Optuna's n_jobs) each ask for a trial as usual, with its own
heartbeat, records, pruning, checkpoint and re-queue on SIGTERM; their fits meet here, and the trials
that can share one program (`dlnn_core.pack.pack_key`) train as one `fit_pack`. Each thread gets back
its own trial's result or the exception its report raised, so the Objective records every trial of a
pack as it records one trained alone."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

GATHER_S = 2.0  # how long the first trial waits for others to join its pack


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
