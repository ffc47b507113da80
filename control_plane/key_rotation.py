"""Rotation of the deployment's master key: a deployment-wide act, so only the operator's tenant may ask."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from control_plane import tenants
from control_plane.adapters.keystore import KeyStore, RotationResult
from control_plane.audit import Actor
from control_plane.db.pool import Connection
from control_plane.errors import PermissionDenied


def rotate_master_key(
    conn: Connection, keys: KeyStore, *, tenant_id: UUID, actor: Actor, now: datetime
) -> RotationResult:
    """Re-wraps every tenant's live data keys under a new master key (see `KeyStore.rotate_master`).

    Raises:
        PermissionDenied: The caller's tenant is not the deployment operator's.
        FailedPrecondition: The master key cannot be rotated (it came from the environment).
    """
    if not tenants.is_operator_tenant(conn, tenant_id):
        raise PermissionDenied(
            "only the deployment operator's tenant may rotate the master key "
            "(use the operator key, as `atelier keys rotate-master` does)"
        )
    return keys.rotate_master(conn, actor=actor, now=now)
