"""Tenants: the services that integrate atelier. Accounts and API keys belong to one."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import psycopg

from control_plane.audit import Actor, record_audit
from control_plane.db.pool import Connection
from control_plane.errors import InvalidArgument, NotFound
from control_plane.user_tokens import IdentityProvider

_COLUMNS = "tenant_id, name, policy_profile, created_at"


@dataclass(frozen=True)
class Tenant:
    """A tenant row."""

    tenant_id: UUID
    name: str
    policy_profile: str
    created_at: datetime


def ensure_tenant(conn: Connection, *, name: str, actor: Actor, now: datetime) -> tuple[Tenant, bool]:
    """Returns the tenant called `name`, creating it when missing.

    Safe against concurrent callers: the insert is `ON CONFLICT DO NOTHING`, so two
    launchers starting at once end up with one tenant.

    Returns:
        The tenant, and whether this call created it.

    Raises:
        InvalidArgument: `name` is empty or over 100 characters.
    """
    _validate_name(name)
    with conn.transaction():
        row = conn.execute(
            f"""
            INSERT INTO tenants (name, created_at) VALUES (%s, %s)
            ON CONFLICT (name) DO NOTHING
            RETURNING {_COLUMNS}
            """,
            (name, now),
        ).fetchone()
        if row is not None:
            tenant = Tenant(*row)
            record_audit(conn, actor, now, "tenant.create", "tenant", tenant.tenant_id, {"name": name})
            return tenant, True
    return get_tenant_by_name(conn, name), False


def claim_operator_tenant(conn: Connection, tenant_id: UUID) -> None:
    """Makes the tenant the deployment's operator tenant unless one already is.

    The launcher claims its tenant before anything else exists, so the operator tenant is the
    launcher's; tenants made later are ordinary ones (`is_operator_tenant` is false for them).
    """
    try:
        with conn.transaction():
            conn.execute(
                "UPDATE tenants SET operator = true WHERE tenant_id = %s AND NOT EXISTS "
                "(SELECT 1 FROM tenants WHERE operator)",
                (tenant_id,),
            )
    except psycopg.errors.UniqueViolation:
        pass  # another tenant's claim committed first


def is_operator_tenant(conn: Connection, tenant_id: UUID) -> bool:
    """Whether the tenant is the deployment's operator tenant (the launcher's)."""
    row = conn.execute("SELECT operator FROM tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
    return row is not None and bool(row[0])


def get_tenant(conn: Connection, tenant_id: UUID) -> Tenant:
    """Returns the tenant with this id.

    Raises:
        NotFound: No such tenant.
    """
    row = conn.execute(f"SELECT {_COLUMNS} FROM tenants WHERE tenant_id = %s", (tenant_id,)).fetchone()
    if row is None:
        raise NotFound(f"tenant {tenant_id} not found")
    return Tenant(*row)


def get_tenant_by_name(conn: Connection, name: str) -> Tenant:
    """Returns the tenant called `name`.

    Raises:
        NotFound: No such tenant.
    """
    row = conn.execute(f"SELECT {_COLUMNS} FROM tenants WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise NotFound(f"tenant {name!r} not found")
    return Tenant(*row)


def set_policy_profile(
    conn: Connection, *, tenant_id: UUID, profile: str, known_profiles: Collection[str], actor: Actor, now: datetime
) -> Tenant:
    """Makes the tenant's accounts follow `profile` ("default" is the cluster's), with the audit row.

    Raises:
        InvalidArgument: `profile` is not one of `known_profiles`.
        NotFound: No such tenant.
    """
    if profile not in known_profiles:
        raise InvalidArgument("policy_profile", f"is {profile!r}; valid values: {', '.join(sorted(known_profiles))}")
    with conn.transaction():
        row = conn.execute(
            f"UPDATE tenants SET policy_profile = %s WHERE tenant_id = %s RETURNING {_COLUMNS}", (profile, tenant_id)
        ).fetchone()
        if row is None:
            raise NotFound(f"tenant {tenant_id} not found")
        record_audit(conn, actor, now, "tenant.policy_profile", "tenant", tenant_id, {"policy_profile": profile})
    return Tenant(*row)


def identity_provider(conn: Connection, tenant_id: UUID) -> IdentityProvider | None:
    """The tenant's OIDC identity provider, None when it has none."""
    row = conn.execute(
        "SELECT oidc_issuer, oidc_audience, oidc_jwks, oidc_account_claim, require_user_token "
        "FROM tenants WHERE tenant_id = %s AND oidc_issuer IS NOT NULL",
        (tenant_id,),
    ).fetchone()
    return IdentityProvider(*row) if row is not None else None


def set_identity_provider(
    conn: Connection, *, tenant_id: UUID, provider: IdentityProvider | None, actor: Actor, now: datetime
) -> None:
    """Configures (or, with None, removes) the tenant's identity provider, with the audit row.

    Raises:
        NotFound: No such tenant.
    """
    values = (
        (provider.issuer, provider.audience, provider.jwks, provider.account_claim, provider.required)
        if provider is not None
        else (None, None, None, "sub", False)
    )
    with conn.transaction():
        row = conn.execute(
            "UPDATE tenants SET oidc_issuer = %s, oidc_audience = %s, oidc_jwks = %s, oidc_account_claim = %s, "
            "require_user_token = %s WHERE tenant_id = %s RETURNING tenant_id",
            (*values, tenant_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"tenant {tenant_id} not found")
        details = {"issuer": values[0], "audience": values[1], "required": values[4]}
        record_audit(conn, actor, now, "tenant.identity_provider", "tenant", tenant_id, details)


def _validate_name(name: str) -> None:
    if not 1 <= len(name) <= 100:
        raise InvalidArgument("name", "must be 1..100 characters")
