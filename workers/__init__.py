"""The study service: study specs -> Optuna studies (SQLite or PostgreSQL) -> workers -> dashboard -> export.
Everything that talks to Optuna lives here; `dlnn_core` trains one config and knows nothing of it.

Importing this package is cheap (no torch): `workers.gpu_slot` must run before torch touches CUDA,
so the public names below are loaded on first use."""

from .errors import UsageError

__all__ = ["StudySpec", "UsageError", "load_spec", "parse_spec"]


def __getattr__(name: str):
    if name in ("StudySpec", "load_spec", "parse_spec"):
        from . import spec

        return getattr(spec, name)
    raise AttributeError(f"module 'workers' has no attribute {name!r}")
