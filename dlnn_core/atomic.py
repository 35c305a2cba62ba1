"""Files that appear whole or not at all: the one atomic writer for data caches, run files and
artifact stores."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable


def write_atomic(path: Path, write: Callable[[BinaryIO], object], *, suffix: str = ".tmp", durable: bool = True) -> None:
    """Write through `write(file)` to a unique temporary file beside `path`, then os.replace:
    readers and concurrent writers of the same file see either a whole old file or a whole new
    one, and a failed write leaves nothing behind. `durable` fsyncs the file before the rename and
    the folder after it, so a crash cannot leave an empty file (off for scratch files)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
