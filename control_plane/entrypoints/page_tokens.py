"""Opaque page tokens for keyset pagination.

A token is URL-safe base64 of a small JSON object naming the listing, the account and the
position after which the next page starts. Tokens are not secret and not signed: they only
move a cursor within an account the caller may read anyway, and decoding checks the listing
and account so a token cannot be replayed against another listing.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Any
from uuid import UUID

from control_plane.api_keys import KeyCursor
from control_plane.content import ContentCursor
from control_plane.errors import InvalidArgument

_FIELD = "page_token"
_MAX_TOKEN_CHARS = 512
MAX_ENTRY_ID = 2**63 - 1
"""Largest id a token may carry: ids are PostgreSQL bigints, and a larger one would fail in SQL."""


def encode_ledger_token(account_id: UUID, before_entry_id: int) -> str:
    """Token for the ledger page after entry `before_entry_id`."""
    return _encode({"l": "ledger", "a": str(account_id), "e": before_entry_id})


def decode_ledger_token(token: str, account_id: UUID) -> int | None:
    """Returns the entry id to list before; None for an empty token.

    Raises:
        InvalidArgument: The token is not one a ledger listing of this account returned.
    """
    return _entry_id(_decode(token, "ledger", account_id))


def encode_content_token(account_id: UUID, cursor: ContentCursor) -> str:
    """Token for the content page after `cursor`."""
    return _encode(
        {"l": "content", "a": str(account_id), "t": cursor.created_at.isoformat(), "c": str(cursor.content_id)}
    )


def decode_content_token(token: str, account_id: UUID) -> ContentCursor | None:
    """Returns the cursor to list after; None for an empty token.

    Raises:
        InvalidArgument: The token is not one a content listing of this account returned.
    """
    return _content_cursor(_decode(token, "content", account_id))


def encode_gallery_token(tenant_id: UUID, cursor: ContentCursor) -> str:
    """Token for the public gallery page after `cursor`."""
    return _encode(
        {"l": "gallery", "a": str(tenant_id), "t": cursor.created_at.isoformat(), "c": str(cursor.content_id)}
    )


def decode_gallery_token(token: str, tenant_id: UUID) -> ContentCursor | None:
    """Returns the gallery cursor to list after; None for an empty token.

    Raises:
        InvalidArgument: The token is not one a gallery listing of this tenant returned.
    """
    return _content_cursor(_decode(token, "gallery", tenant_id))


def encode_audit_token(account_id: UUID, before_id: int) -> str:
    """Token for the audit page of an account older than entry `before_id`."""
    return _encode({"l": "audit", "a": str(account_id), "e": before_id})


def decode_audit_token(token: str, account_id: UUID) -> int | None:
    """Returns the audit id to list before; None for an empty token.

    Raises:
        InvalidArgument: The token is not one an audit listing of this account returned.
    """
    return _entry_id(_decode(token, "audit", account_id))


def encode_api_key_token(tenant_id: UUID, cursor: KeyCursor) -> str:
    """Token for the tenant's key page after `cursor`."""
    return _encode({"l": "api_keys", "a": str(tenant_id), "t": cursor.created_at.isoformat(), "k": cursor.key_id})


def decode_api_key_token(token: str, tenant_id: UUID) -> KeyCursor | None:
    """Returns the key cursor to list after; None for an empty token.

    Raises:
        InvalidArgument: The token is not one a key listing of this tenant returned.
    """
    payload = _decode(token, "api_keys", tenant_id)
    if payload is None:
        return None
    try:
        created_at = datetime.fromisoformat(payload["t"])
        key_id = payload["k"]
    except (KeyError, TypeError, ValueError):
        raise _invalid() from None
    if created_at.tzinfo is None or not isinstance(key_id, str) or len(key_id) > 64:
        raise _invalid()
    return KeyCursor(created_at=created_at, key_id=key_id)


def encode_removals_cursor(after_id: int) -> str:
    """The opaque cursor after removal `after_id` (also what `atelier export removals --since` takes)."""
    return base64.urlsafe_b64encode(f"removals:{after_id}".encode()).decode().rstrip("=")


def decode_removals_cursor(token: str) -> int:
    """The removal id a cursor continues after; 0 for an empty token.

    Raises:
        InvalidArgument: Not a cursor ListRemovals returned.
    """
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, number = text.partition(":")
        after_id = int(number)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise InvalidArgument("page_token", "is not a cursor ListRemovals returned") from None
    if prefix != "removals" or not 0 <= after_id <= MAX_ENTRY_ID:
        raise InvalidArgument("page_token", "is not a cursor ListRemovals returned")
    return after_id


def _entry_id(payload: dict[str, object] | None) -> int | None:
    """The positive integer id a ledger or audit token carries; None for an empty token."""
    if payload is None:
        return None
    entry_id = payload.get("e")
    if not isinstance(entry_id, int) or isinstance(entry_id, bool) or not 1 <= entry_id <= MAX_ENTRY_ID:
        raise _invalid()
    return entry_id


def _content_cursor(payload: dict[str, Any] | None) -> ContentCursor | None:
    if payload is None:
        return None
    if not isinstance(payload.get("t"), str) or not isinstance(payload.get("c"), str):
        raise _invalid()
    try:
        created_at = datetime.fromisoformat(payload["t"])
        content_id = UUID(payload["c"])
    except (KeyError, TypeError, ValueError):
        raise _invalid() from None
    if created_at.tzinfo is None:
        raise _invalid()
    return ContentCursor(created_at=created_at, content_id=content_id)


def _encode(payload: dict[str, Any]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(token: str, listing: str, account_id: UUID) -> dict[str, Any] | None:
    if not token:
        return None
    if len(token) > _MAX_TOKEN_CHARS:
        raise _invalid()
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        payload = json.loads(raw)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise _invalid() from None
    if not isinstance(payload, dict) or payload.get("l") != listing or payload.get("a") != str(account_id):
        raise _invalid()
    return payload


def _invalid() -> InvalidArgument:
    return InvalidArgument(_FIELD, "is not a token from a previous response for this account; omit it to start over")
