"""How many replicas of each model pool are running, as the gateway learns it from Serve.

The gateway refuses a request at once (UNAVAILABLE `POOL_UNAVAILABLE`, nothing reserved) while
its model's pool has no running replica, instead of queueing it until the caller's deadline
passes, and its health check answers NOT_SERVING for that model. Serve's controller knows the
replica states; asking it on every request would put a controller round trip in each one, so
a background task asks every `interval_s` and requests read the last answer.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any

logger = logging.getLogger(__name__)

RUNNING = "RUNNING"
"""Serve's `ReplicaState` of a replica that serves requests."""


def running_replicas(status: Any, app_name: str, deployments: Mapping[str, str]) -> dict[str, int]:
    """Running replicas per pool from a `serve.status()` answer.

    Args:
        status: `ray.serve.schema.ServeStatus`.
        app_name: The Serve application the pools belong to.
        deployments: Deployment name of each pool, by pool name.

    Returns:
        Running replicas by pool name; a pool Serve does not list counts 0.
    """
    application = status.applications.get(app_name)
    listed = application.deployments if application is not None else {}
    counts = {}
    for pool, deployment in deployments.items():
        overview = listed.get(deployment)
        states = overview.replica_states if overview is not None else {}
        counts[pool] = sum(n for state, n in states.items() if str(getattr(state, "value", state)) == RUNNING)
    return counts


class PoolReplicaWatch:
    """The running replicas of each pool, refreshed in the background from Serve's controller."""

    def __init__(
        self,
        read_status: Callable[[], Any],
        app_name: str,
        deployments: Mapping[str, str],
        *,
        interval_s: float = 1.0,
    ) -> None:
        """Describes the watch; it starts on the first `running` call (inside the replica's event loop).

        Args:
            read_status: Returns Serve's status (`ray.serve.status`); blocking, so run in a thread.
            app_name: The Serve application of the pools.
            deployments: Deployment name of each pool, by pool name.
            interval_s: Seconds between refreshes, > 0.
        """
        self._read_status = read_status
        self._app_name = app_name
        self._deployments = dict(deployments)
        self._interval_s = interval_s
        self._running: dict[str, int] | None = None
        self._task: asyncio.Task[None] | None = None

    def running(self, pool: str) -> int | None:
        """Running replicas of `pool` at the last refresh; None until the first refresh ends (or
        while Serve's controller does not answer), when nothing is known."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._refresh_forever())
        return None if self._running is None else self._running.get(pool, 0)

    async def _refresh_forever(self) -> None:
        while True:
            try:
                status = await asyncio.to_thread(self._read_status)
                self._running = running_replicas(status, self._app_name, self._deployments)
            except Exception as exc:  # the controller restarting: know nothing rather than something stale
                logger.warning("pool_status_unknown error=%s", type(exc).__name__)
                self._running = None
            await asyncio.sleep(self._interval_s)
