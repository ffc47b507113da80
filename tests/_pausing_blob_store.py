"""A blob store that freezes mid-job, so a crash test can kill its process at a known point."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from control_plane.adapters.blobstore import LocalBlobStore


class PausingBlobStore(LocalBlobStore):
    """A local blob store that stops before its `pause_at`-th `pause_on` call (a read or a delete).

    There it prints "paused" and waits for a line on stdin: the parent test kills the process
    while it waits, or sends a line to let it go on.
    """

    def __init__(self, root: Path, *, pause_on: Literal["get", "delete"], pause_at: int) -> None:
        super().__init__(root)
        self._pause_on = pause_on
        self._pause_at = pause_at
        self._calls = 0

    def _count(self, operation: str) -> None:
        if operation != self._pause_on:
            return
        self._calls += 1
        if self._calls == self._pause_at:
            print("paused", flush=True)
            sys.stdin.readline()

    def get(self, key: str) -> bytes:
        self._count("get")
        return super().get(key)

    def delete(self, key: str) -> None:
        self._count("delete")
        super().delete(key)
