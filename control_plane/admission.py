"""Admission of a generation: the account's rate limit, the prompt's moderation, then the credit hold.

What the gateway asks before any GPU work starts. The rules (reservation lifetimes, the
per-account rate and concurrency bounds, what makes two requests the same for an idempotency
key) live here, so the servicer only parses the request and maps the answer.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

from control_plane import accounts, credits, moderation
from control_plane.audit import Actor
from control_plane.clock import Clock
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import Connection
from control_plane.errors import InvalidArgument
from control_plane.policy import PolicyProfile
from control_plane.rate_limits import RateLimiter, account_rate_limiter

MAX_CALLER_FINGERPRINT_BYTES = 64
"""Longest request fingerprint a caller may send with an idempotency key."""


@dataclass(frozen=True)
class AdmissionRules:
    """The deployment's bounds on holding credits, built once from config."""

    default_ttl: timedelta
    """Lifetime of a reservation that asks for none."""
    max_ttl: timedelta
    """Longest lifetime a caller may ask for."""
    account_limiter: RateLimiter | None
    """Reservations per second per account; None when off."""
    concurrency: credits.ConcurrencyLimit | None
    """Generations in flight per account; None when off."""

    @classmethod
    def from_config(cls, config: ControlPlaneConfig, clock: Clock) -> AdmissionRules:
        """The rules `config` sets, with the rate limiter on `clock`."""
        return cls(
            default_ttl=timedelta(seconds=config.reservation_ttl_s),
            max_ttl=timedelta(seconds=config.max_reservation_ttl_s),
            account_limiter=account_rate_limiter(config, clock),
            concurrency=(
                credits.ConcurrencyLimit(config.max_concurrent_generations, float(config.concurrency_retry_s))
                if config.max_concurrent_generations
                else None
            ),
        )

    def reservation_ttl(self, ttl_seconds: int) -> timedelta:
        """The lifetime of a reservation that asked for `ttl_seconds` (0: the default).

        Raises:
            InvalidArgument: Past `max_ttl` (field `ttl_seconds`).
        """
        if ttl_seconds == 0:
            return self.default_ttl
        if not 0 < ttl_seconds <= self.max_ttl.total_seconds():
            raise InvalidArgument(
                "ttl_seconds",
                f"must be 0..{int(self.max_ttl.total_seconds())} (0 means {int(self.default_ttl.total_seconds())})",
            )
        return timedelta(seconds=ttl_seconds)


@dataclass(frozen=True)
class GenerationRequest:
    """What a caller asks to hold credits for."""

    account_id: UUID
    amount: int
    """Credits to hold, 1..credits.MAX_RESERVATION."""
    purpose: str
    prompt: str
    """Screened by the tenant's moderation policy; empty skips the screen."""
    ttl_seconds: int = 0
    """Requested lifetime; 0 for the deployment's default."""
    idempotency_key: str | None = None
    """Makes a retry return the first request's result; None for none."""
    caller_fingerprint: bytes = b""
    """The caller's own digest of what else shapes the request, 0..64 bytes."""

    def fingerprint(self) -> bytes:
        """SHA-256 of everything that shapes the reservation's result.

        Each part is length-prefixed, so no two different requests concatenate to the same bytes.
        """
        digest = hashlib.sha256()
        for part in (self.caller_fingerprint, str(self.amount).encode(), self.purpose.encode(), self.prompt.encode()):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        return digest.digest()


def admit_generation(
    conn: Connection,
    rules: AdmissionRules,
    checker: moderation.ModerationChecker,
    profile: PolicyProfile,
    request: GenerationRequest,
    *,
    tenant_id: UUID,
    actor: Actor,
    now: datetime,
) -> credits.Reserved:
    """Rate-limits the account, screens the prompt, then holds the credits.

    Raises:
        RateLimited: The account is over its reservation rate.
        NotFound: No such account in the tenant.
        PromptBlocked: Moderation refused the prompt (its flag is committed first).
        InvalidArgument: A field is out of range.
        Everything `credits.reserve_credits(_idempotently)` raises.
    """
    if len(request.caller_fingerprint) > MAX_CALLER_FINGERPRINT_BYTES:
        raise InvalidArgument("idempotency.request_fingerprint", f"must be 0..{MAX_CALLER_FINGERPRINT_BYTES} bytes")
    ttl = rules.reservation_ttl(request.ttl_seconds)
    if rules.account_limiter is not None:
        # Keyed by tenant too, so no other tenant's calls can drain this account's bucket.
        rules.account_limiter.take((tenant_id, request.account_id))
    verdict = moderation.check_prompt(checker, request.prompt)
    if verdict is not None:
        # Blocked prompts are recorded and refused before anything is held. The account is
        # checked first, so flags never name another tenant's account; a prompt that passes
        # leaves that check to the hold itself (one round trip, not two).
        accounts.get_account(conn, tenant_id=tenant_id, account_id=request.account_id)
        moderation.block_prompt(
            conn,
            profile.moderation,
            verdict,
            account_id=request.account_id,
            prompt=request.prompt,
            actor=actor,
            now=now,
        )
    if request.idempotency_key is None:
        reservation, balance = credits.reserve_credits(
            conn,
            tenant_id=tenant_id,
            account_id=request.account_id,
            amount=request.amount,
            ttl=ttl,
            purpose=request.purpose,
            actor=actor,
            now=now,
            concurrency=rules.concurrency,
        )
        return credits.Reserved(reservation, balance, None)
    return credits.reserve_credits_idempotently(
        conn,
        tenant_id=tenant_id,
        account_id=request.account_id,
        amount=request.amount,
        ttl=ttl,
        purpose=request.purpose,
        actor=actor,
        now=now,
        idempotency=credits.IdempotencyKey(request.idempotency_key, request.fingerprint()),
        concurrency=rules.concurrency,
    )
