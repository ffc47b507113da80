"""Durable, all-or-nothing file writes: a reader sees the old file or the whole new one, never a part."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, data: bytes) -> None:
    """Replaces `path` with `data`, durably, as a file only its owner can read (mode 0600).

    The bytes go to a temporary file beside `path`, are fsynced, then renamed over it
    (`os.replace`, atomic on POSIX), and the directory is fsynced: after the call returns the
    file survives a crash. On any failure the temporary file is removed and `path` is untouched.

    Raises:
        OSError: The directory is missing or not writable, or the disk is full.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
