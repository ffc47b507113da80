"""End users' OIDC ID tokens: a tenant's identity provider, and the check of a token against it.

A call acting for an end user may prove who that user is with an ID token (a JWS signed by
the tenant's identity provider). It is accepted when its signature verifies with a key of the
provider's JSON Web Key Set (asymmetric algorithms only), its `iss` is the provider's issuer,
its `aud` holds the configured audience, and it is within its `nbf`/`exp` at the server
clock's `now` (times are checked here, not by PyJWT, so they follow the clock tests move).
The account it proves is the value of `account_claim` (`sub` by default).

The key set is configured inline (a JSON document) or as a URL (`https://`, or `file://` for
a mounted secret) fetched by PyJWT's `PyJWKClient`, which caches it and refetches when a token
names a key id it does not know (the provider rotated its keys).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import unquote, urlparse

import jwt

from control_plane.config import ConfigError
from control_plane.errors import Unauthenticated

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
"""Signature algorithms accepted: asymmetric only, so a key set never doubles as a shared secret."""

CLOCK_SKEW = timedelta(seconds=60)
"""Leeway for `exp` and `nbf` between the provider's clock and ours."""


@dataclass(frozen=True)
class IdentityProvider:
    """A tenant's OIDC identity provider, as `tenants` stores it."""

    issuer: str
    """The `iss` every token must carry."""
    audience: str
    """A value the token's `aud` must hold (the client id the provider issued tokens to)."""
    jwks: str
    """The JSON Web Key Set: a JSON document, or an `https://` or `file://` URL of one."""
    account_claim: str = "sub"
    """The claim whose value is the atelier account id the token proves."""
    required: bool = False
    """An acting account is accepted only with a valid token."""

    def __post_init__(self) -> None:
        for name in ("issuer", "audience", "account_claim"):
            if not getattr(self, name):
                raise ConfigError(name, "must not be empty")
        if not self.jwks_url:
            try:
                jwt.PyJWKSet.from_json(self.jwks)
            except (jwt.PyJWKSetError, jwt.InvalidKeyError, ValueError) as error:
                raise ConfigError("jwks", f"is neither a JSON Web Key Set nor an https/file URL: {error}") from None

    @property
    def jwks_url(self) -> str | None:
        """The key set's URL, or None when it is given inline."""
        return self.jwks if self.jwks.startswith(("https://", "http://", "file://")) else None


@dataclass
class UserTokenVerifier:
    """Verifies ID tokens against providers; keeps each provider's key set between calls."""

    _sets: dict[str, jwt.PyJWKSet] = field(default_factory=dict)
    _clients: dict[str, jwt.PyJWKClient] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def verify(self, token: str, provider: IdentityProvider, now: datetime) -> str:
        """The account id the token proves.

        Raises:
            Unauthenticated: The token is malformed, signed by no key of the provider, for
                another issuer or audience, outside its validity at `now`, or lacks the
                account claim. The message says which, never the token.
        """
        try:
            key = self._signing_key(token, provider)
            claims = jwt.decode(
                token,
                key=key.key,
                algorithms=list(ALGORITHMS),
                audience=provider.audience,
                issuer=provider.issuer,
                # Times are checked below against the server's clock.
                options={"verify_exp": False, "verify_nbf": False, "verify_iat": False, "require": ["exp"]},
            )
        except jwt.PyJWTError as error:
            raise Unauthenticated(
                f"x-atelier-user-token is not a valid ID token of the tenant's provider: {error}"
            ) from None
        instant = now.timestamp()
        skew = CLOCK_SKEW.total_seconds()
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] + skew <= instant:
            raise Unauthenticated("x-atelier-user-token has expired; sign the user in again")
        if isinstance(claims.get("nbf"), int | float) and claims["nbf"] - skew > instant:
            raise Unauthenticated("x-atelier-user-token is not valid yet (nbf is in the future)")
        account = claims.get(provider.account_claim)
        if not isinstance(account, str) or not account:
            raise Unauthenticated(f"x-atelier-user-token has no {provider.account_claim!r} claim naming the account")
        return account

    def _signing_key(self, token: str, provider: IdentityProvider) -> jwt.PyJWK:
        url = provider.jwks_url
        if url is not None and url.startswith("file://"):
            # Read here, not by PyJWKClient (which takes only http(s) since PyJWT 2.11); read on
            # every call, so a rotated mounted Secret applies at once (a small local file).
            return _key_for(token, _read_key_set(url))
        if url is not None:
            with self._lock:
                client = self._clients.get(url)
                if client is None:
                    client = self._clients[url] = jwt.PyJWKClient(url, cache_jwk_set=True, lifespan=300, timeout=5)
            try:
                return client.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError as error:
                raise jwt.PyJWKClientError(f"the tenant's key set could not be fetched ({error})") from None
        with self._lock:
            keys = self._sets.get(provider.jwks)
            if keys is None:
                keys = self._sets[provider.jwks] = jwt.PyJWKSet.from_json(provider.jwks)
        return _key_for(token, keys)


def _read_key_set(url: str) -> jwt.PyJWKSet:
    """The key set in the local file a `file://` URL names."""
    path = Path(unquote(urlparse(url).path))
    try:
        return jwt.PyJWKSet.from_json(path.read_text())
    except OSError as error:
        raise jwt.PyJWKClientError(f"the tenant's key set could not be read ({error.strerror})") from None


def _key_for(token: str, keys: jwt.PyJWKSet) -> jwt.PyJWK:
    """The key of `keys` that the token's header names (the only key, when it names none)."""
    kid = jwt.get_unverified_header(token).get("kid")
    candidates = [k for k in keys.keys if kid is None or k.key_id == kid]
    if not candidates:
        raise jwt.InvalidKeyError(f"no key of the tenant's key set has key id {kid!r}")
    if len(candidates) > 1:
        raise jwt.InvalidKeyError("the token names no key id and the tenant's key set has several keys")
    return candidates[0]
