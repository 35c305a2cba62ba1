"""A small fleet of real `dlnn work` processes (benchmarks/fleet.py, its stand-in for fit) on one
PostgreSQL study, one of them killed with SIGKILL mid-trial: every budgeted trial is done exactly
once, the killed trial is failed and retried, nothing is left RUNNING, and no worker imports torch."""

from __future__ import annotations

import sys

import pytest
from service_support import REPO, pg_url  # noqa: F401 (fixture)

sys.path.insert(0, str(REPO / "benchmarks"))

from fleet import run_fleet  # noqa: E402

WORKERS, TRIALS = 8, 24


@pytest.mark.slow
def test_a_fleet_does_every_trial_once_through_a_sigkill(pg_url):
    result = run_fleet(pg_url, WORKERS, TRIALS, epochs=3, epoch_s=0.5, heartbeat=1, grace=3, kill_every=2, max_kills=1,
                       time_limit_s=120)
    checks = result["checks"]
    assert result["stopped_by"] is None, result
    assert checks["killed_trials"] == 1, result
    assert checks["killed_trials_not_retried"] == [], result
    assert checks["budget_slots"] == TRIALS and checks["slots_done_once"] == TRIALS, result
    assert checks["left_running_or_waiting"] == 0 and checks["told_complete_then_lost"] == [], result
    assert result["states"] == {"COMPLETE": TRIALS, "FAIL": 1}, result
    assert result["worker_exits"] == {"0": WORKERS}, result  # the killed one wrote no exit; its replacement did
    assert result["workers_started"] == WORKERS + 1
    assert not result["torch_imported"]
    assert result["ask_s"]["n"] == TRIALS + 1 and result["tell_s"]["n"] == TRIALS, result
    assert result["connections_peak"] <= 2 * WORKERS, result  # one per worker, and a budget lock's for a moment
