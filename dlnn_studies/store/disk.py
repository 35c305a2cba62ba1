"""Full disks: a message that says so, and artifact writes that leave nothing half-written.

Torch's checkpoint writer hides the errno of a failed write ("unexpected pos 704 vs 598"), so a
write failure counts as a full disk either when ENOSPC/EDQUOT is in the exception's chain or
when TMPDIR, where a trial writes its checkpoint, has almost no space left.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import tempfile
from typing import Any, BinaryIO

NEARLY_FULL_BYTES = 16 * 2**20  # less free space than this in TMPDIR: a failed write is put down to it
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _chain(exc: BaseException | None):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def no_space_reason(exc: BaseException, what: str) -> str | None:
    """"no space left on device in TMPDIR=... while writing <what>: <error>" when `exc` comes from
    a full disk, else None."""
    tmp = tempfile.gettempdir()
    try:
        free = shutil.disk_usage(tmp).free
    except OSError:
        free = None
    tmp_full = free is not None and free < NEARLY_FULL_BYTES
    if not tmp_full and not any(isinstance(e, OSError) and e.errno in NO_SPACE for e in _chain(exc)):
        return None
    error = f"{type(exc).__name__}: {exc}"[:500]
    free_text = f"{free / 2**20:.1f} MiB free" if free is not None else "free space unknown"
    if tmp_full:
        return f"no space left on device in TMPDIR={tmp} ({free_text}) while writing {what}: {error}"
    return f"no space left on device while writing {what} (TMPDIR={tmp} has {free_text}; another disk is full): {error}"


class CleanArtifactStore:
    """An artifact store whose failed writes remove what they left (a full disk leaves 0-byte or
    partial files behind, which the dashboard would serve as if they were the artifact)."""

    def __init__(self, store: Any):
        self.store = store

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        try:
            self.store.write(artifact_id, content_body)
        except BaseException:
            with contextlib.suppress(Exception):
                self.store.remove(artifact_id)
            raise

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.store.open_reader(artifact_id)

    def remove(self, artifact_id: str) -> None:
        self.store.remove(artifact_id)
