"""What every RPC reads about its caller, kept briefly in memory: the key, the tenant's settings.

Authenticating a call read the API key row, and most calls then read their tenant's identity
provider and policy profile: three round trips before any work, the same answers every time.
`CallerFacts` keeps each answer for `ttl_s` seconds (`ControlPlaneConfig.caller_cache_ttl_ms`).

What that bounds: a key revoked or rotated through this process takes effect at once (the
servicer clears the cache; a call of that key already in flight when it did may keep the old
row up to `ttl_s` more). A change made elsewhere
(another control-plane replica, SQL on the database) takes effect here within `ttl_s`; a
rotated key's grace period still ends exactly on time, since the cached row carries its end.
Only keys that authenticated are kept, so unknown secrets cannot fill the cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from uuid import UUID

from control_plane.api_keys import KeyRecord
from control_plane.tenants import IdentityProvider
from control_plane.ttl_cache import TtlCache


@dataclass(frozen=True)
class CallerFacts:
    """The caches `authorized` and the servicers read through; one per server process."""

    keys: TtlCache[str, KeyRecord]
    """Authenticated keys by the SHA-256 of their secret."""
    identity_providers: TtlCache[UUID, IdentityProvider | None]
    """Each tenant's OIDC identity provider (None: it has none)."""
    policy_profiles: TtlCache[UUID, str | None]
    """The name of the policy profile each tenant follows (None: the default)."""

    @classmethod
    def with_ttl(cls, ttl_s: float) -> CallerFacts:
        """Caches keeping answers `ttl_s` seconds (0: off, every call reads the database)."""
        return cls(TtlCache(ttl_s), TtlCache(ttl_s), TtlCache(ttl_s))

    def clear(self) -> None:
        """Forgets everything, after a key or a tenant setting changed through this process."""
        self.keys.clear()
        self.identity_providers.clear()
        self.policy_profiles.clear()
