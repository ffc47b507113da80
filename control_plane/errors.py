"""The errors domain code raises; the server interceptor maps each to one gRPC status code.

Messages are written for the caller: they say what was wrong and what to do instead, and
never contain prompts, secrets or internal details.
"""

from __future__ import annotations

from collections.abc import Mapping


class DomainError(Exception):
    """Base of every error the control plane expects and reports to its caller.

    Attributes:
        message: Text for the caller.
        reason: A stable UPPER_SNAKE identifier sent as `google.rpc.ErrorInfo.reason`, so
            callers can branch without parsing the message; None sends no ErrorInfo.
        metadata: Extra ErrorInfo key/values (strings only), e.g. the credits available.
    """

    reason: str | None = None

    def __init__(self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata: Mapping[str, str] = dict(metadata or {})


class NotFound(DomainError):
    """An account, reservation or content id is unknown to the caller's tenant."""


class InvalidArgument(DomainError):
    """A request field is malformed or out of range.

    Attributes:
        field: The request field at fault, e.g. `items[2].data`.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.description = message
        """What is wrong with the field, without its name (`google.rpc.BadRequest`'s description)."""


class Unauthenticated(DomainError):
    """The API key is missing, malformed, unknown or revoked."""


class PermissionDenied(DomainError):
    """The API key lacks the scope the call needs."""


class InsufficientCredits(DomainError):
    """The account's available credits do not cover the reservation."""

    reason = "INSUFFICIENT_CREDITS"

    def __init__(self, *, available: int, requested: int) -> None:
        super().__init__(
            f"the account has {available} credits available and {requested} were requested: "
            "grant credits or reserve fewer",
            metadata={"available": str(available), "requested": str(requested)},
        )
        self.available = available
        self.requested = requested


class FailedPrecondition(DomainError):
    """The current state forbids the call (reservation settled or expired, account
    suspended, under the minimum age)."""


class AlreadyExists(DomainError):
    """A unique name is taken."""


class Unavailable(DomainError):
    """A dependency (the database) cannot be reached right now; retrying may succeed.

    The interceptor sends a `google.rpc.RetryInfo` with it."""


class DatabaseUnavailable(Unavailable):
    """The database cannot be reached, or not within the caller's deadline; nothing was changed
    that the caller did not see confirmed."""

    reason = "DATABASE_UNAVAILABLE"

    def __init__(self) -> None:
        super().__init__("the database is unavailable right now; retry shortly")


class StorageFull(DomainError):
    """The blob store has no space left (or a file would pass the process's size limit), so
    nothing was stored. Retrying helps only once an operator frees or adds space."""

    reason = "BLOB_STORE_FULL"


class BlobStoreUnavailable(Unavailable):
    """The blob store (an object store's endpoint) cannot be reached or refused the request
    (down, timing out, credentials refused); the call changed nothing, and a retry with
    backoff may succeed. Answered UNAVAILABLE with a RetryInfo, never INTERNAL."""

    reason = "BLOB_STORE_UNAVAILABLE"


class AccountNotActive(FailedPrecondition):
    """The account is suspended or erased, so it cannot generate or store content."""

    def __init__(self, account_id: object, status: str) -> None:
        super().__init__(
            f"account {account_id} is {status}: it cannot generate or store content",
            reason=f"ACCOUNT_{status.upper()}",
        )


class RetryLater(DomainError):
    """A refusal that goes away with time; the caller should retry after `retry_after_s`.

    The interceptor sends `retry_after_s` as a `google.rpc.RetryInfo` next to the ErrorInfo.

    Attributes:
        retry_after_s: Seconds to wait before retrying, > 0.
    """

    def __init__(self, message: str, *, reason: str, retry_after_s: float, metadata: Mapping[str, str] | None = None):
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after_s = retry_after_s


class RateLimited(RetryLater):
    """A token bucket (per API key or per account) is empty."""

    def __init__(self, scope: str, retry_after_s: float) -> None:
        super().__init__(
            f"rate limit of this {scope} exceeded: retry in {retry_after_s:.3f} s",
            reason="RATE_LIMITED",
            retry_after_s=retry_after_s,
            metadata={"scope": scope},
        )


class TooManyConcurrentRequests(RetryLater):
    """The account already has the maximum number of generations in flight."""

    def __init__(self, limit: int, retry_after_s: float) -> None:
        super().__init__(
            f"the account already has {limit} generations in flight, its limit: "
            f"retry in {retry_after_s:.0f} s or when one of them finishes",
            reason="TOO_MANY_CONCURRENT_REQUESTS",
            retry_after_s=retry_after_s,
            metadata={"limit": str(limit)},
        )


class Aborted(RetryLater):
    """A concurrent request with the same idempotency key is still in flight."""
