"""The caller's gRPC deadline, carried from Serve's proxy to the gateway and the model replicas.

Serve 2.60's proxy builds the context the gateway sees (`RayServegRPCContext`) from the caller's
metadata only: the deadline the caller set stays in the proxy. The proxy patch
(`inference.grpc_proxy`) stamps it into that context's invocation metadata as `DEADLINE_METADATA`,
an absolute wall-clock time (seconds since the epoch), so every process of the request, on any node,
knows how long the caller still waits: the gateway bounds its control-plane calls by it and counts a
request abandoned at its deadline as DEADLINE_EXCEEDED, not CANCELLED, and a model replica drops a
request whose deadline passed while it was queued instead of computing images nobody will read.
Wall clocks of a cluster's nodes agree to milliseconds (NTP), far finer than any deadline.

With direct ingress (`ATELIER_DIRECT_INGRESS`) the caller reaches the Gateway replica's own gRPC
server, no proxy in between: the same servicer hook stamps the deadline there, and adds
`INGRESS_METADATA` so the gateway knows which way the call came (a failed stream ends differently).
Both keys are dropped from what the caller sent, on either path.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import Any

DEADLINE_METADATA = "x-atelier-deadline"
"""Invocation metadata key of the caller's deadline, seconds since the epoch (set by the proxy only:
the proxy drops any value a caller sent)."""

INGRESS_METADATA = "x-atelier-ingress"
"""Invocation metadata key set (to `DIRECT_INGRESS`) on calls that reached the Gateway replica's own
gRPC server (direct ingress); never taken from the caller."""
DIRECT_INGRESS = "direct"

EXPIRED_GRACE_S = 0.005
"""A request abandoned within this much of its deadline was abandoned because of it: gRPC's own timer
and this process's clock differ by about this much."""


def stamp_deadline(
    metadata: Iterable[tuple[str, Any]], time_remaining_s: float | None, now: float, *, direct: bool = False
) -> list[Any]:
    """The invocation metadata with the proxy's deadline entry in place of any the caller sent.

    Args:
        metadata: The caller's invocation metadata.
        time_remaining_s: What the caller's gRPC context says is left (None: no deadline).
        now: `time.time()` in the proxy.
        direct: The call reached the Gateway replica directly (adds `INGRESS_METADATA`).
    """
    stamped = [(key, value) for key, value in metadata if key not in (DEADLINE_METADATA, INGRESS_METADATA)]
    if time_remaining_s is not None and math.isfinite(time_remaining_s):
        stamped.append((DEADLINE_METADATA, f"{now + max(0.0, time_remaining_s):.6f}"))
    if direct:
        stamped.append((INGRESS_METADATA, DIRECT_INGRESS))
    return stamped


def came_directly(metadata: Iterable[tuple[str, Any]] | None) -> bool:
    """Whether the call reached the Gateway replica's own gRPC server (direct ingress), not the proxy."""
    return any(key == INGRESS_METADATA and value == DIRECT_INGRESS for key, value in metadata or ())


def deadline_of(metadata: Iterable[tuple[str, Any]] | None) -> float | None:
    """The caller's deadline (seconds since the epoch) from invocation metadata; None without one."""
    for key, value in metadata or ():
        if key == DEADLINE_METADATA:
            try:
                deadline = float(value)
            except (TypeError, ValueError):
                return None
            return deadline if math.isfinite(deadline) else None
    return None


def remaining_s(deadline: float | None, now: float | None = None) -> float | None:
    """Seconds left until `deadline` (negative once passed); None without a deadline."""
    if deadline is None:
        return None
    return deadline - (time.time() if now is None else now)


def has_expired(deadline: float | None, now: float | None = None) -> bool:
    """Whether `deadline` has passed (within `EXPIRED_GRACE_S`); never without one."""
    left = remaining_s(deadline, now)
    return left is not None and left <= EXPIRED_GRACE_S


__all__ = [
    "DEADLINE_METADATA",
    "DIRECT_INGRESS",
    "EXPIRED_GRACE_S",
    "INGRESS_METADATA",
    "came_directly",
    "deadline_of",
    "has_expired",
    "remaining_s",
    "stamp_deadline",
]
