"""Running a control-plane job (sweep, training export) in this process, against the database.

Jobs do not go through the gRPC server: they need the database, the blob store and the keys,
exactly like the server (and the Helm chart's CronJobs give them that environment).
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from atelier.cli._output import CommandError

if TYPE_CHECKING:
    from control_plane.bootstrap import ControlPlaneDeps
    from control_plane.clock import Clock
    from control_plane.config import ControlPlaneConfig


def parse_as_of(text: str | None) -> datetime.datetime | None:
    """`--as-of`: an ISO 8601 time (UTC when it names no zone); None when not given."""
    if not text:
        return None
    try:
        instant = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise CommandError("--as-of must be an ISO 8601 time like 2026-05-01T12:00:00Z", "INVALID_ARGUMENT") from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=datetime.UTC)


@contextmanager
def job_deps(as_of: datetime.datetime | None) -> Iterator[tuple[ControlPlaneConfig, ControlPlaneDeps]]:
    """The configuration and dependencies from `ATELIER_*` settings, with a clock standing at `as_of`."""
    from control_plane.bootstrap import bootstrap
    from control_plane.clock import ManualClock, SystemClock
    from control_plane.config import ConfigError, ControlPlaneConfig

    clock: Clock = ManualClock(as_of) if as_of is not None else SystemClock()
    try:
        config = ControlPlaneConfig.from_env()
        deps = bootstrap(config, clock=clock)
    except ConfigError as exc:
        raise CommandError(str(exc), "INVALID_ARGUMENT") from None
    except Exception as exc:  # the driver's message names the server and the failure
        raise CommandError(f"cannot reach the control plane's database: {exc}", "UNAVAILABLE") from None
    from control_plane.errors import Unavailable

    with deps:
        try:
            yield config, deps
        except Unavailable as exc:  # the database or the blob store went away mid-job
            raise CommandError(exc.message, "UNAVAILABLE") from None
