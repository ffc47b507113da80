"""The call metadata that says who calls: the service key and the end user it acts for.

Shared by the control plane (which checks them), the gateway (which forwards the caller's
to the control plane) and clients, so every side spells the keys the same.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

AUTHORIZATION = "authorization"
"""`Bearer <service API key>`."""
ACTING_ACCOUNT = "x-atelier-acting-account"
"""The id of the account (end user) the call acts for."""
USER_TOKEN = "x-atelier-user-token"
"""An OIDC ID token (compact JWS) of that end user, issued by the tenant's identity provider."""


@dataclass(frozen=True)
class CallerCredentials:
    """What a caller presented: its API key and, optionally, the end user it acts for."""

    api_key: str
    acting_account: str = ""
    """Empty when the call acts for the tenant as a whole."""
    user_token: str = ""

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata that presents these credentials."""
        pairs = [(AUTHORIZATION, f"Bearer {self.api_key}")]
        if self.acting_account:
            pairs.append((ACTING_ACCOUNT, self.acting_account))
        if self.user_token:
            pairs.append((USER_TOKEN, self.user_token))
        return tuple(pairs)


def first_value(metadata: Iterable[Any] | None, key: str) -> str:
    """The first value of `key` in gRPC metadata (stripped), or "" when absent."""
    for name, value in metadata or ():
        if name == key:
            return str(value).strip()
    return ""
