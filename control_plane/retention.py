"""Retention: the retention rules of a policy profile, and the one SQL definition of a deadline.

The rules live in the tenant's `PolicyProfile` (DESIGN.md §9: profiles decide); this module
gives the retention view of it (`RetentionPolicy`) and the SQL the sweeper, the sweep-lag
gauge and training eligibility share:

- `POLICY_CTE` turns the profiles of every tenant into a `policy` relation (one row per
  tenant), so one statement applies each tenant's own rules;
- `DEADLINE_SQL` is the instant an item must be gone by (NULL: kept), over `content c`,
  `accounts a` and `policy p`. Deadlines are computed, not stored, so a profile or tier
  change (premium, legal hold, keep) applies to existing content at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from control_plane.db.pool import Connection
from control_plane.policy import PolicyProfile, PolicyRegistry, TrainingConsentMode


@dataclass(frozen=True)
class RetentionPolicy:
    """How long content and usage data are kept under one profile (DESIGN.md §5 defaults)."""

    generated_retention: timedelta | None
    """Generated images are deleted this long after creation; None: no age limit."""

    generated_retention_tiers: tuple[str, ...]
    """Account tiers the age limit applies to (e.g. only "free")."""

    inactivity_purge: timedelta | None
    """Generated images of accounts inactive this long are deleted; None: never."""

    inactivity_exempt_tiers: tuple[str, ...]
    """Tiers the inactivity purge spares (e.g. "premium")."""

    upload_lifetime: timedelta
    """Uploads for editing are deleted this long after upload."""

    deleted_purge: timedelta
    """A soft-deleted item's row and blob are purged this long after the delete."""

    usage_retention: timedelta
    """Aggregated usage rows are kept this long."""

    @classmethod
    def from_profile(cls, profile: PolicyProfile) -> RetentionPolicy:
        """The retention fields of `profile`."""
        return cls(
            generated_retention=_days(profile.generated_retention_days),
            generated_retention_tiers=tuple(profile.generated_retention_tiers),
            inactivity_purge=_days(profile.inactivity_purge_days),
            inactivity_exempt_tiers=tuple(profile.inactivity_exempt_tiers),
            upload_lifetime=timedelta(hours=profile.upload_lifetime_hours),
            deleted_purge=timedelta(days=profile.deleted_purge_days),
            usage_retention=timedelta(days=profile.usage_retention_days),
        )

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready description, for export manifests and sweep reports."""
        return {
            "generated_retention_days": _in_days(self.generated_retention),
            "generated_retention_tiers": list(self.generated_retention_tiers),
            "inactivity_purge_days": _in_days(self.inactivity_purge),
            "inactivity_exempt_tiers": list(self.inactivity_exempt_tiers),
            "upload_lifetime_hours": self.upload_lifetime.total_seconds() / 3600,
            "deleted_purge_days": _in_days(self.deleted_purge),
            "usage_retention_days": _in_days(self.usage_retention),
        }


@dataclass(frozen=True)
class TenantPolicies:
    """Every tenant's profile, resolved once per sweep or export pass."""

    by_tenant: dict[UUID, PolicyProfile]

    @classmethod
    def load(cls, conn: Connection, registry: PolicyRegistry) -> TenantPolicies:
        """Reads each tenant's profile name and resolves it in `registry`."""
        rows = conn.execute("SELECT tenant_id, policy_profile FROM tenants").fetchall()
        return cls({tenant_id: registry.get(name) for tenant_id, name in rows})

    def retention(self) -> list[RetentionPolicy]:
        """The distinct retention policies in force."""
        return list({RetentionPolicy.from_profile(p): None for p in self.by_tenant.values()})

    def params(self) -> dict[str, Any]:
        """Query parameters of `POLICY_CTE`."""
        tenants = list(self.by_tenant)
        profiles = [self.by_tenant[t] for t in tenants]
        views = [RetentionPolicy.from_profile(p) for p in profiles]
        return {
            "p_tenant": tenants,
            "p_generated": [v.generated_retention for v in views],
            "p_generated_tiers": [",".join(v.generated_retention_tiers) for v in views],
            "p_inactivity": [v.inactivity_purge for v in views],
            "p_inactivity_exempt": [",".join(v.inactivity_exempt_tiers) for v in views],
            "p_upload": [v.upload_lifetime for v in views],
            "p_deleted_purge": [v.deleted_purge for v in views],
            "p_usage": [v.usage_retention for v in views],
            "p_opt_out": [p.training_consent_mode is TrainingConsentMode.OPT_OUT for p in profiles],
            "p_private_ok": [p.private_content_in_training for p in profiles],
        }

    def shortest(self, pick: str) -> timedelta | None:
        """The shortest non-None `pick` (a RetentionPolicy field) in force; None when none is set.

        The sweeper's index range uses it as an outer bound: no tenant's deadline comes sooner.
        """
        values = [getattr(v, pick) for v in self.retention() if getattr(v, pick) is not None]
        return min(values) if values else None


POLICY_CTE = """
policy (tenant_id, generated_retention, generated_tiers, inactivity, inactivity_exempt, upload_lifetime,
        deleted_purge, usage_retention, training_opt_out, private_in_training) AS (
    SELECT * FROM unnest(
        %(p_tenant)s::uuid[], %(p_generated)s::interval[], %(p_generated_tiers)s::text[],
        %(p_inactivity)s::interval[], %(p_inactivity_exempt)s::text[], %(p_upload)s::interval[],
        %(p_deleted_purge)s::interval[], %(p_usage)s::interval[], %(p_opt_out)s::boolean[],
        %(p_private_ok)s::boolean[])
)
"""
"""`WITH`-clause body: the `policy` relation, one row per tenant; parameters from `TenantPolicies.params`."""

DEADLINE_SQL = """
(CASE WHEN a.legal_hold OR a.keep THEN NULL ELSE LEAST(
    CASE WHEN c.kind = 'generated' AND a.tier = ANY(string_to_array(p.generated_tiers, ','))
         THEN c.created_at + p.generated_retention END,
    CASE WHEN c.kind = 'generated' AND a.status = 'active'
              AND NOT a.tier = ANY(string_to_array(p.inactivity_exempt, ','))
         THEN a.last_active_at + p.inactivity END,
    CASE WHEN c.kind = 'upload' THEN c.created_at + p.upload_lifetime END,
    c.expires_at,
    CASE WHEN c.deleted_at IS NOT NULL THEN coalesce(c.purge_after, c.deleted_at + p.deleted_purge) END
) END)
"""
"""When the item `c` (owner `a`, owner's tenant policy `p`) must be deleted; NULL while no rule
applies (legal hold and the keep flag exempt everything). LEAST ignores NULLs."""


def _days(days: int | None) -> timedelta | None:
    return timedelta(days=days) if days is not None else None


def _in_days(delta: timedelta | None) -> float | None:
    return delta.total_seconds() / 86400 if delta is not None else None
