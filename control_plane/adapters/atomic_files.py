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
    file survives a crash on any POSIX file system. On any failure the temporary file is
    removed and `path` is untouched.

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


def write_atomically_one_sync(path: Path, data: bytes) -> None:
    """`write_atomically` with one fsync instead of two, for the blob store's hot path.

    The bytes go to a temporary file beside `path`, which is renamed over `path` once they are
    all written (so a reader still sees the old file or the whole new one), and only then
    fsynced, through the descriptor still open. On Linux's journaling file systems (ext4,
    XFS, btrfs) that one fsync also makes the rename durable: the rename changed the file's
    inode (its ctime) in the same journal transaction as the directory, and fsync commits the
    journal up to the inode's last change. The directory's own fsync, POSIX's portable way,
    would be a second flush of the same journal. On a file system without that property
    (ext2, some network file systems) a crash right after the call may lose the name; use
    `write_atomically` where that matters more than latency.

    A failure before the rename leaves `path` untouched; a failed fsync after it removes
    `path`, whose bytes may not all have reached the disk (an old file there was replaced
    already, so use it for files that are written once, as blobs are).

    Raises:
        OSError: The directory is missing or not writable, or the disk is full.
    """
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    renamed = False
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.replace(temporary, path)
            renamed = True
            os.fsync(file.fileno())
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path if renamed else temporary)
        raise
