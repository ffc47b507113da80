"""Admission of generation requests to a model pool, decided in the gateway before any work.

Under overload, queueing more than a pool can serve within a request's latency only makes every
admitted request late, and a refusal after the credits were reserved costs a reservation and a release
in the control plane, work that competes with the model for the same CPUs. So the gateway counts the
requests each pool holds (from their reservation until the model's answer) and, while a pool is full,
refuses the next request at once, before the reservation or the model, with UNAVAILABLE
`POOL_AT_CAPACITY` and a RetryInfo. Requests count only once reserved, so those the control plane
refuses (no credits, rate limits) never take a pool's room; a burst may pass the check together while
they reserve (a few milliseconds), and Serve's handle queue (`max_queued_requests`) bounds that.

The bound is what the pool's running replicas can serve within about two batch cycles: each replica
takes `max_ongoing_requests` at once (a full batch with the defaults), and one more batch
(`max_batch_size` requests) may wait for it in the handle's queue, capped by `max_queued_requests`.
An admitted request therefore waits behind at most about one batch of its replica besides its own,
whatever the offered rate, and the replica never idles between batches: when one ends, the next is
already there, full. (Half a batch queued, tried on tiny-sd on 2 shared CPU cores, refused requests at
the knee and let the next batch start half empty; the admitted p99 at 3x the knee was no better within
the machine's noise.) Serve's own
queue bound (`max_queued_requests`, BackPressureError) stays behind it as a second line.
"""

from __future__ import annotations

from collections import Counter

from inference.config import ModelConfig


def admission_limit(model: ModelConfig, running_replicas: int | None) -> int | None:
    """How many requests a gateway lets into `model`'s pool at once; None for no bound.

    Args:
        model: The pool's lead model (a pool's models agree on every replica setting).
        running_replicas: Replicas Serve reports running; None (unknown) or 0 (scaling up from zero,
            restarting) count as one, since a request is what makes the pool grow.
    """
    if model.max_queued_requests == -1:
        return None
    replicas = max(1, running_replicas or 0)
    queued = min(model.max_queued_requests, replicas * model.max_batch_size)
    return replicas * model.max_ongoing_requests + queued


class PoolAdmission:
    """The requests one gateway replica has let into each pool (its event loop's only: no locking)."""

    def __init__(self) -> None:
        self._admitted: Counter[str] = Counter()

    def has_room(self, pool: str, limit: int | None) -> bool:
        """Whether fewer than `limit` requests hold a slot of `pool` (always without a limit)."""
        return limit is None or self._admitted[pool] < limit

    def enter(self, pool: str) -> AdmissionSlot:
        """A slot in `pool` for a request that passed `has_room` and was reserved."""
        self._admitted[pool] += 1
        return AdmissionSlot(self, pool)

    def admitted(self, pool: str) -> int:
        """Requests holding a slot of `pool` now."""
        return self._admitted[pool]

    def _leave(self, pool: str) -> None:
        self._admitted[pool] -= 1


class AdmissionSlot:
    """One admitted request's place in its pool; `leave` it once the model answered (or it failed)."""

    def __init__(self, admission: PoolAdmission, pool: str) -> None:
        self._admission = admission
        self._pool = pool
        self._held = True

    def leave(self) -> None:
        """Gives the place back. Idempotent."""
        if self._held:
            self._held = False
            self._admission._leave(self._pool)


__all__ = ["AdmissionSlot", "PoolAdmission", "admission_limit"]
