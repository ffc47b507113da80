"""Content: storing generated images and uploads, reading them back, listing a gallery.

Bytes go to a `BlobStore`, metadata to the `content` table. A store of several items is
all-or-nothing: blobs are written first, then every row (and, optionally, the commit of the
reservation that paid for them) in one transaction; if that transaction fails, the blobs
written for it are deleted again. A row therefore never points at a missing blob, and a
failed store leaves nothing behind.

Blobs are stored as given for now; encryption at rest slots in as a `BlobStore` wrapper.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

from psycopg.types.json import Jsonb

from control_plane import accounts, credits
from control_plane.accounts import Visibility
from control_plane.audit import Actor, AuditEntry, record_audits
from control_plane.blobstore import BlobStore
from control_plane.db.pool import Connection
from control_plane.errors import InvalidArgument, NotFound

_logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ACCEPTED_MEDIA_TYPES = ("image/png",)
MAX_ITEMS = 16
MAX_ITEM_BYTES = 32 * 1024 * 1024
MAX_PROMPT_CHARS = 2000

_COLUMNS = (
    "content_id, account_id, kind, media_type, sha256, size_bytes, visibility, prompt, parameters, model, "
    "created_at, expires_at, blob_key"
)


class ContentKind(StrEnum):
    """Where the content came from; uploads are kept only briefly."""

    GENERATED = "generated"
    UPLOAD = "upload"


@dataclass(frozen=True)
class NewContent:
    """One item to store."""

    kind: ContentKind
    media_type: str
    data: bytes
    prompt: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)
    """Generation parameters as JSON-ready values; `model` is also kept in its own column."""
    visibility: Visibility | None = None
    """None takes the account's default."""


@dataclass(frozen=True)
class ContentItem:
    """A stored item's metadata."""

    content_id: UUID
    account_id: UUID
    kind: ContentKind
    media_type: str
    sha256: str
    size_bytes: int
    visibility: Visibility
    prompt: str
    parameters: Mapping[str, Any]
    model: str
    created_at: datetime
    expires_at: datetime | None
    blob_key: str


@dataclass(frozen=True)
class StoreResult:
    """What `store_content` stored and charged."""

    contents: list[ContentItem]
    """In request order."""
    reservation: credits.Reservation | None
    """The committed reservation, when one was given."""
    balance: credits.Balance


@dataclass(frozen=True)
class ContentCursor:
    """Position in a newest-first listing: the last item of the previous page."""

    created_at: datetime
    content_id: UUID


@dataclass(frozen=True)
class ContentPage:
    """A page of content, newest first."""

    items: list[ContentItem]
    next_cursor: ContentCursor | None
    """Pass as `after` for the next page; None when there is none."""


def validate_new_content(items: Sequence[NewContent]) -> None:
    """Checks a store request's items without touching storage.

    Raises:
        InvalidArgument: No items or more than 16; or an item (named `items[i].<field>`)
            has another media type than image/png, bytes that are not a PNG, more than
            32 MiB, or a prompt over 2000 characters.
    """
    if not 1 <= len(items) <= MAX_ITEMS:
        raise InvalidArgument("items", f"must hold 1..{MAX_ITEMS} items, got {len(items)}")
    for index, item in enumerate(items):
        where = f"items[{index}]"
        if item.media_type not in ACCEPTED_MEDIA_TYPES:
            raise InvalidArgument(f"{where}.media_type", f"must be one of {', '.join(ACCEPTED_MEDIA_TYPES)}")
        if not item.data:
            raise InvalidArgument(f"{where}.data", "must not be empty")
        if len(item.data) > MAX_ITEM_BYTES:
            raise InvalidArgument(f"{where}.data", f"must be at most {MAX_ITEM_BYTES} bytes")
        if not item.data.startswith(PNG_SIGNATURE):
            raise InvalidArgument(f"{where}.data", "is not a PNG image (no PNG signature)")
        if len(item.prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"{where}.prompt", f"must be at most {MAX_PROMPT_CHARS} characters")


def store_content(
    conn: Connection,
    blobs: BlobStore,
    *,
    tenant_id: UUID,
    account_id: UUID,
    items: Sequence[NewContent],
    commit_reservation_id: UUID | None,
    actor: Actor,
    now: datetime,
) -> StoreResult:
    """Stores 1..16 items of an account together, optionally committing their reservation.

    Args:
        conn: Connection outside a transaction.
        blobs: Where the bytes go.
        tenant_id: The caller's tenant; the account must belong to it.
        account_id: Owner of the items.
        items: What to store; see `validate_new_content`.
        commit_reservation_id: A held reservation of the same account to commit in the
            same transaction, so content is never stored uncharged or charged unstored.
        actor: Who stores.
        now: Creation time; also recorded as the account's last activity.

    Returns:
        The items in request order, the committed reservation (if any) and the balance.

    Raises:
        InvalidArgument: See `validate_new_content`.
        NotFound: No such account in the tenant, or no such reservation of the account.
        AccountNotActive: The account is suspended or erased.
        FailedPrecondition: The reservation is settled or expired.
    """
    validate_new_content(items)
    account = accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
    accounts.require_active(account)
    prepared = [_prepare(account, item, now) for item in items]
    written: list[str] = []
    try:
        for stored, item in zip(prepared, items, strict=True):
            blobs.put(stored.blob_key, item.data)
            written.append(stored.blob_key)
        with conn.transaction():
            reservation: credits.Reservation | None = None
            if commit_reservation_id is not None:
                reservation, balance = credits.commit_reservation(
                    conn,
                    tenant_id=tenant_id,
                    reservation_id=commit_reservation_id,
                    account_id=account_id,
                    actor=actor,
                    now=now,
                )
            else:
                balance = credits.get_balance(conn, tenant_id=tenant_id, account_id=account_id)
            _insert_rows(conn, prepared, commit_reservation_id)
            accounts.touch_last_active(conn, account_id, now)
            record_audits(
                conn,
                actor,
                now,
                [
                    AuditEntry(
                        "content.store",
                        "content",
                        str(stored.content_id),
                        {"account_id": str(account_id), "kind": stored.kind.value, "size_bytes": stored.size_bytes},
                    )
                    for stored in prepared
                ],
            )
    except BaseException:
        _delete_quietly(blobs, written)
        raise
    return StoreResult(contents=prepared, reservation=reservation, balance=balance)


def get_content(
    conn: Connection,
    blobs: BlobStore,
    *,
    tenant_id: UUID,
    content_id: UUID,
    include_data: bool,
) -> tuple[ContentItem, bytes | None]:
    """Returns an item of the tenant's accounts, and its bytes when `include_data` is set.

    Deleted items are not found (they are hidden at once and purged later).

    Raises:
        NotFound: No such live item in the tenant.
        BlobNotFoundError: The row exists but its blob does not (a storage fault).
    """
    row = conn.execute(
        f"""
        SELECT {_COLUMNS} FROM content
        WHERE content_id = %s AND deleted_at IS NULL
          AND account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %s)
        """,
        (content_id, tenant_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"content {content_id} not found")
    item = _content_item(row)
    return item, blobs.get(item.blob_key) if include_data else None


def list_content(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    limit: int,
    after: ContentCursor | None = None,
) -> ContentPage:
    """Returns up to `limit` live items of an account, newest first.

    Args:
        limit: Page size, >= 1.
        after: The previous page's `next_cursor`; None for the newest items.

    Raises:
        NotFound: No such account in the tenant.
    """
    accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
    rows = conn.execute(
        f"""
        SELECT {_COLUMNS} FROM content
        WHERE account_id = %(account_id)s AND deleted_at IS NULL
          AND (%(after_at)s::timestamptz IS NULL OR (created_at, content_id) < (%(after_at)s, %(after_id)s::uuid))
        ORDER BY created_at DESC, content_id DESC
        LIMIT %(limit)s
        """,
        {
            "account_id": account_id,
            "after_at": after.created_at if after else None,
            "after_id": after.content_id if after else None,
            "limit": limit + 1,
        },
    ).fetchall()
    # One row more than asked tells whether another page exists.
    items = [_content_item(row) for row in rows[:limit]]
    next_cursor = ContentCursor(items[-1].created_at, items[-1].content_id) if len(rows) > limit else None
    return ContentPage(items=items, next_cursor=next_cursor)


def _prepare(account: accounts.Account, item: NewContent, now: datetime) -> ContentItem:
    content_id = uuid4()
    model = item.parameters.get("model", "")
    return ContentItem(
        content_id=content_id,
        account_id=account.account_id,
        kind=item.kind,
        media_type=item.media_type,
        sha256=hashlib.sha256(item.data).hexdigest(),
        size_bytes=len(item.data),
        visibility=item.visibility or account.default_visibility,
        prompt=item.prompt,
        parameters=dict(item.parameters),
        model=model if isinstance(model, str) else "",
        created_at=now,
        # Retention rules (per policy profile) are applied by the retention issue's sweeper.
        expires_at=None,
        blob_key=f"{account.account_id}/{content_id}",
    )


def _insert_rows(conn: Connection, prepared: Sequence[ContentItem], reservation_id: UUID | None) -> None:
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO content (content_id, account_id, kind, media_type, visibility, blob_key, sha256,
                                 size_bytes, prompt, parameters, model, reservation_id, created_at, expires_at)
            VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
            """,
            [
                (
                    c.content_id,
                    c.account_id,
                    c.kind.value,
                    c.media_type,
                    c.visibility.value,
                    c.blob_key,
                    c.sha256,
                    c.size_bytes,
                    c.prompt,
                    Jsonb(dict(c.parameters)),
                    c.model,
                    reservation_id,
                    c.created_at,
                    c.expires_at,
                )
                for c in prepared
            ],
        )


def _delete_quietly(blobs: BlobStore, keys: Sequence[str]) -> None:
    # Runs while another exception propagates: a failed delete is logged, not raised, so
    # the caller sees the original error. A blob left behind has no row and is harmless.
    for key in keys:
        try:
            blobs.delete(key)
        except Exception:
            _logger.warning("could not delete blob of a failed store blob_key=%s", key, exc_info=True)


def _content_item(row: tuple[Any, ...]) -> ContentItem:
    (
        content_id,
        account_id,
        kind,
        media_type,
        sha256,
        size_bytes,
        visibility,
        prompt,
        parameters,
        model,
        created_at,
        expires_at,
        blob_key,
    ) = row
    return ContentItem(
        content_id=content_id,
        account_id=account_id,
        kind=ContentKind(kind),
        media_type=media_type,
        sha256=sha256,
        size_bytes=size_bytes,
        visibility=Visibility(visibility),
        prompt=prompt,
        parameters=parameters,
        model=model,
        created_at=created_at,
        expires_at=expires_at,
        blob_key=blob_key,
    )
