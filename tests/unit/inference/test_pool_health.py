"""The gateway's count of running replicas per pool, from Serve's status."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ray.serve._private.common import ReplicaState

from inference.pool_health import PoolReplicaWatch, running_replicas


@dataclass
class _Deployment:
    replica_states: dict[Any, int]


@dataclass
class _Application:
    deployments: dict[str, _Deployment]


@dataclass
class _Status:
    applications: dict[str, _Application] = field(default_factory=dict)


POOLS = {"sd": "DiffusionModel-sd", "xl": "DiffusionModel-xl"}


def test_counts_only_running_replicas_and_an_unlisted_pool_as_none() -> None:
    status = _Status(
        {
            "atelier": _Application(
                {"DiffusionModel-sd": _Deployment({ReplicaState.RUNNING: 2, ReplicaState.STARTING: 1})}
            )
        }
    )
    assert running_replicas(status, "atelier", POOLS) == {"sd": 2, "xl": 0}


def test_a_missing_application_has_no_running_replica() -> None:
    assert running_replicas(_Status(), "atelier", POOLS) == {"sd": 0, "xl": 0}


def test_the_watch_knows_nothing_until_serve_answered_then_follows_it() -> None:
    answers = [_Status({"atelier": _Application({"DiffusionModel-sd": _Deployment({ReplicaState.RUNNING: 1})})})]

    async def scenario() -> tuple[int | None, int | None, int | None]:
        watch = PoolReplicaWatch(lambda: answers[-1], "atelier", POOLS, interval_s=0.01)
        before = watch.running("sd")
        await asyncio.sleep(0.1)
        running = watch.running("sd")
        answers.append(_Status())  # every replica of the pool gone
        await asyncio.sleep(0.1)
        return before, running, watch.running("sd")

    assert asyncio.run(scenario()) == (None, 1, 0)
