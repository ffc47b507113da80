"""Helpers the privacy integration tests share: items, stores, tenant profiles."""

from __future__ import annotations

from datetime import datetime

from control_plane import tenants
from control_plane.audit import SYSTEM
from control_plane.db.pool import Pool
from control_plane.policy import PolicyRegistry
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import Caller, png_bytes


def new_item(seed: int = 0, prompt: str | None = None, **fields: object) -> pb.NewContent:
    """A generated PNG item with parameters and a prompt."""
    values: dict[str, object] = {
        "kind": pb.CONTENT_KIND_GENERATED,
        "media_type": "image/png",
        "data": png_bytes(seed),
        "prompt": prompt if prompt is not None else f"a lighthouse at dusk #{seed}",
        "parameters": common_pb2.GenerationParameters(model="tiny-sd", width=64, height=64, steps=2, seed=seed),
    }
    values.update(fields)
    return pb.NewContent(**values)  # type: ignore[arg-type]


def generate(
    stub: ControlPlaneStub, caller: Caller, account_id: str, *items: pb.NewContent, cost: int = 1
) -> pb.StoreContentResponse:
    """Reserves (with the first item's prompt) and stores with commit, exactly as the gateway does."""
    prompt = items[0].prompt if items else ""
    reservation = stub.ReserveCredits(
        pb.ReserveCreditsRequest(account_id=account_id, amount=cost, purpose="generate tiny-sd", prompt=prompt),
        metadata=caller.metadata,
    ).reservation
    return stub.StoreContent(
        pb.StoreContentRequest(
            account_id=account_id, items=list(items), commit_reservation_id=reservation.reservation_id
        ),
        metadata=caller.metadata,
    )


def use_profile(pool: Pool, policies: PolicyRegistry, caller: Caller, profile: str, now: datetime) -> None:
    """Makes the caller's tenant follow `profile`."""
    with pool.connection() as conn:
        tenants.set_policy_profile(
            conn,
            tenant_id=caller.principal.tenant_id,
            profile=profile,
            known_profiles={"default", *policies.named},
            actor=SYSTEM,
            now=now,
        )
