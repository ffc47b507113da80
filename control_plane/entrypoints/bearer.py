"""The caller's API key secret, read from `authorization: Bearer <secret>` metadata.

Its own module because both the interceptor (per-key rate limits, before any handler) and
`_auth` (authentication, inside the handler) read it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from control_plane.errors import Unauthenticated


def bearer_secret(metadata: Sequence[Any] | None) -> str:
    """The secret of `authorization: Bearer <secret>` metadata.

    Raises:
        Unauthenticated: There is none.
    """
    for key, value in metadata or ():
        if key == "authorization":
            scheme, _, secret = str(value).partition(" ")
            if scheme.lower() == "bearer" and secret.strip():
                return secret.strip()
            break
    raise Unauthenticated("send the API key as metadata `authorization: Bearer <secret>`")
