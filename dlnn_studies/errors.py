"""The one user-facing error type of the study service: `dlnn` prints its message and exits 1."""

from __future__ import annotations


class UsageError(Exception):
    """Something the user can fix (a bad spec, an unknown study, an unreachable storage)."""
