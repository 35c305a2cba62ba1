"""dlnn-studies, the study service: study specs -> Optuna studies (SQLite or PostgreSQL) -> workers ->
dashboard -> report and export. `dlnn_core` trains one config and knows nothing of this package or of Optuna.

  cli/     the `dlnn` command: main.py holds the one table of every command; study, train and ops commands
  study/   what is done to a study: launch, the budgeted study, workers, status, refine, verify, report, export
  spec/    study specs (studies/*.toml): their schema, search space, study names, sampler and pruner registries
  store/   where things are kept: the Optuna storage (a database or the gRPC proxy's client), artifacts,
           dataset files, full disks, and optuna_private.py, the only module that imports Optuna's private names
  ops/     processes beside the workers: GPU slot claiming, the dashboard server, the gRPC storage proxy
  errors.py  UsageError, the one user-facing error

Imports run one way: cli -> study -> spec -> store, cli -> ops -> store, and everything -> dlnn_core and
errors.py; no module imports a cycle (tests/test_layout.py checks both).

Importing this package is cheap (no torch): `dlnn_studies.ops.gpu_slot` must run before torch touches CUDA,
so the public names below are loaded on first use."""

from .errors import UsageError

__all__ = ["StudySpec", "UsageError", "load_spec", "parse_spec"]


def __getattr__(name: str):
    if name in ("StudySpec", "load_spec", "parse_spec"):
        from .spec import schema

        return getattr(schema, name)
    raise AttributeError(f"module 'dlnn_studies' has no attribute {name!r}")
