"""Content: storing generated images and uploads, reading them back, listing a gallery.

Bytes go to a `BlobStore`, metadata to the `content` table. A store of several items is
all-or-nothing: every row (and, optionally, the commit of the reservation that paid for them)
is written in one transaction, which commits only once the blobs are durable; if it fails, the
blobs written for it are deleted again. A row therefore never points at a missing blob, and a
failed store leaves nothing behind.

A store is the hot path's last step, so it is short on round trips: one read of the account
(with its consent, age evidence and data key), then the transaction in two (BEGIN with one
statement holding every write, then COMMIT), the blobs written meanwhile. Generated images are
watermarked and signed before they are sealed (`provenance`), which reads their training
eligibility (and an edit's upload) and adds their marks' row to the transaction; verdicts of the
moderation rules and of the replica's image classifier decide how each item is stored.

Bytes and prompts are encrypted at rest with the account's data key (`EncryptedBlobStore`,
`crypto.seal`), the content id bound as associated data. Visibility is per item: the owner
always reads its content; other accounts only public, unflagged items, without prompts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Mapping, Sequence
from concurrent import futures
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

from psycopg.types.json import Jsonb

from control_plane import accounts, consent, credits, crypto, moderation, output_scan, png
from control_plane.accounts import AccountStatus, Visibility
from control_plane.adapters.blobstore import BlobStore
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.keystore import LIVE_KEY_COLUMNS, DataKey, DataKeyDestroyed, KeyStore
from control_plane.audit import Actor, actor_parameters, audit_rows_sql, record_audit
from control_plane.db.pool import Connection, expect_row, pipelined_transaction
from control_plane.errors import AccountNotActive, FailedPrecondition, InvalidArgument, NotFound
from control_plane.policy import ModerationPolicy
from control_plane.provenance import ItemToMark, Mark, ProvenanceMarker, record_marks

_logger = logging.getLogger(__name__)

PNG_SIGNATURE = png.SIGNATURE
ACCEPTED_MEDIA_TYPES = ("image/png",)
MAX_ITEMS = 16
MAX_ITEM_BYTES = 32 * 1024 * 1024
MAX_PROMPT_CHARS = 2000

_COLUMNS = (
    "content_id, account_id, kind, media_type, sha256, size_bytes, visibility, prompt, parameters, model, "
    "created_at, expires_at, blob_key, flagged, encryption_key_id, prompt_sealed"
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
    output_verdict: output_scan.ClassifierVerdict | None = None
    """Generated images: the replica's image classifier's verdict (see `output_scan`)."""
    watermark: bool = True
    """Embed the invisible watermark (generated items; the model's setting)."""
    model_version: str = ""
    """The model's version, stated in the signed manifest."""


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
    flagged: bool = False
    """Moderation flagged it: never public, never exported."""
    encryption_key_id: UUID | None = None
    """The data key its blob and prompt are sealed with; None for plaintext (legacy) rows."""
    prompt_sealed: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class StoreResult:
    """What `store_content` stored and charged."""

    contents: list[ContentItem]
    """In request order."""
    reservation: credits.Reservation | None
    """The committed reservation, when one was given."""
    balance: credits.Balance
    marked: list[bytes | None] = field(default_factory=list)
    """Per item in request order: the stored bytes where provenance marking changed them, else None."""


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
            has another media type than image/png, bytes that are not a PNG (whole chunks up
            to IEND), more than 32 MiB, or a prompt over 2000 characters.
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
        try:
            png.without_metadata(item.data)
        except png.MalformedPng as error:
            raise InvalidArgument(f"{where}.data", f"is not a well-formed PNG image: it {error}") from None
        if len(item.prompt) > MAX_PROMPT_CHARS:
            raise InvalidArgument(f"{where}.prompt", f"must be at most {MAX_PROMPT_CHARS} characters")
        output_scan.validate_verdict(where, item.output_verdict, generated=item.kind is ContentKind.GENERATED)


def store_content(
    conn: Connection,
    blobs: EncryptedBlobStore,
    keys: KeyStore,
    *,
    tenant_id: UUID,
    account_id: UUID,
    items: Sequence[NewContent],
    commit_reservation_id: UUID | None,
    actor: Actor,
    now: datetime,
    checker: moderation.ModerationChecker | None = None,
    moderation_policy: ModerationPolicy | None = None,
    marker: ProvenanceMarker | None = None,
    blob_writer: Executor | None = None,
) -> StoreResult:
    """Stores 1..16 items of an account together, encrypted, optionally committing their reservation.

    Args:
        conn: Connection outside a transaction.
        blobs: Where the sealed bytes go.
        keys: Where the account's data key comes from (created on its first store).
        tenant_id: The caller's tenant; the account must belong to it.
        account_id: Owner of the items.
        items: What to store; see `validate_new_content`.
        commit_reservation_id: A held reservation of the same account to commit in the
            same transaction, so content is never stored uncharged or charged unstored.
        actor: Who stores.
        now: Creation time; also recorded as the account's last activity.
        checker: Moderates each item as an output; a flagged item is stored private and
            flagged, with a flag row. None skips output moderation.
        moderation_policy: The policy `checker` applies (whether flags keep the prompt), and what
            an item whose classifier verdict is above its threshold becomes (`output_scan`).
        marker: Watermarks and signs generated items before they are encrypted and stored
            (`provenance.marking`); None stores the bytes as given.
        blob_writer: Writes the blobs while the rows are inserted; None writes them first, on
            the calling thread.

    Returns:
        The items in request order, the committed reservation (if any) and the balance.

    Raises:
        InvalidArgument: See `validate_new_content`.
        NotFound: No such account in the tenant, or no such reservation of the account.
        AccountNotActive: The account is suspended or erased.
        GuardianConsentRequired: The account needs a guardian's consent first.
        FailedPrecondition: The reservation is settled or expired.
        OutputBlocked: A classifier verdict is above its threshold under a blocking policy; the
            flags and the release of the reservation are committed, nothing is stored.
    """
    validate_new_content(items)
    # Each item is transformed before it is sealed: stored (and so exported) without text, EXIF
    # or other metadata chunks (see `png`), then watermarked and signed (`_mark`).
    items = [dataclasses.replace(item, data=png.without_metadata(item.data)) for item in items]
    storer = _read_storer(conn, tenant_id=tenant_id, account_id=account_id, today=now.date())
    output_scan.withhold_if_blocked(
        conn,
        moderation_policy or ModerationPolicy(),
        [item.output_verdict for item in items],
        tenant_id=tenant_id,
        account_id=account_id,
        prompt=items[0].prompt,
        reservation_id=commit_reservation_id,
        actor=actor,
        now=now,
    )
    data_key = (
        keys.unwrap_live(account_id, storer.live_key)
        if storer.live_key is not None
        else keys.live_data_key(conn, account_id, actor=actor, now=now)
    )
    # Each item's verdicts decide how it is stored: flagged by a rule or by the image classifier,
    # it is private, out of training, and leaves a flag row.
    verdicts = [
        checker.check(moderation.Stage.OUTPUT, item.prompt, item.data) if checker is not None else None
        for item in items
    ]
    flagged = [
        verdict is not None or output_scan.flags(item.output_verdict)
        for item, verdict in zip(items, verdicts, strict=True)
    ]
    content_ids = [uuid4() for _ in items]
    marks = (
        _mark(conn, blobs, keys, marker, storer.account, items, content_ids, flagged, minor=storer.minor, now=now)
        if marker is not None
        else {}
    )
    items = [dataclasses.replace(item, data=marks[i].png) if i in marks else item for i, item in enumerate(items)]
    prepared = [
        _prepare(storer.account, item, now, data_key, content_id, flagged=is_flagged)
        for item, is_flagged, content_id in zip(items, flagged, content_ids, strict=True)
    ]
    # Listed before the writes: a put that fails part-way (a full disk) is cleaned up too.
    written = [stored.blob_key for stored in prepared]
    blobs_durable: Future[None] | None = None
    try:
        # The blobs are written while the rows' statement runs; they are durable before COMMIT,
        # so a committed row never points at a missing blob.
        blobs_durable = _start_writing(blob_writer, blobs, prepared, items, data_key)
        # BEGIN and the statement reach the server in one round trip, COMMIT in one more.
        with pipelined_transaction(conn):
            reservation, balance = _insert_paid_rows(
                conn,
                prepared,
                tenant_id=tenant_id,
                data_key=data_key,
                reservation_id=commit_reservation_id,
                minor=storer.minor,
                actor=actor,
                now=now,
            )
            record_marks(conn, list(marks.values()))
            for stored, item, verdict in zip(prepared, items, verdicts, strict=True):
                if verdict is not None:
                    moderation.record_flag(
                        conn,
                        moderation_policy or ModerationPolicy(),
                        verdict,
                        stage=moderation.Stage.OUTPUT,
                        account_id=account_id,
                        content_id=stored.content_id,
                        prompt=item.prompt,
                        action="flagged",
                        actor=actor,
                        now=now,
                    )
            output_scan.record_flags(
                conn,
                moderation_policy or ModerationPolicy(),
                [
                    (stored.content_id, item.prompt, item.output_verdict)
                    for stored, item in zip(prepared, items, strict=True)
                ],
                account_id=account_id,
                actor=actor,
                now=now,
            )
            blobs_durable.result()
    except BaseException:
        if blobs_durable is not None:
            # Deleting while a write still runs would leave its blob behind.
            futures.wait([blobs_durable])
        _delete_quietly(blobs, written)
        raise
    return StoreResult(
        contents=[_with_prompt(stored, item.prompt) for stored, item in zip(prepared, items, strict=True)],
        reservation=reservation,
        balance=balance,
        marked=[marks[i].png if i in marks else None for i in range(len(items))],
    )


def get_content(
    conn: Connection,
    blobs: EncryptedBlobStore,
    keys: KeyStore,
    *,
    tenant_id: UUID,
    content_id: UUID,
    include_data: bool,
    viewer_account_id: UUID | None = None,
) -> tuple[ContentItem, bytes | None]:
    """Returns an item of the tenant's accounts, and its plaintext bytes when `include_data` is set.

    Deleted items are not found (they are hidden at once and purged later).

    Args:
        viewer_account_id: The account the caller acts for. When set and not the owner, only
            public, unflagged items are found, and their prompt is withheld. None: the
            tenant's own view.

    Raises:
        NotFound: No such live item visible to the viewer in the tenant, or no such viewer.
        DataKeyDestroyed: The owner's data key was destroyed (erased account).
        BlobNotFoundError: The row exists but its blob does not (a storage fault).
    """
    if viewer_account_id is not None:
        accounts.get_account(conn, tenant_id=tenant_id, account_id=viewer_account_id)
    row = conn.execute(
        f"""
        SELECT {_COLUMNS} FROM content
        WHERE content_id = %(content_id)s AND deleted_at IS NULL
          AND account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %(tenant_id)s)
          AND (%(viewer)s::uuid IS NULL OR account_id = %(viewer)s
               OR (visibility = 'public' AND NOT flagged))
        """,
        {"content_id": content_id, "tenant_id": tenant_id, "viewer": viewer_account_id},
    ).fetchone()
    if row is None:
        raise NotFound(f"content {content_id} not found")
    item = _content_item(row)
    owner_view = viewer_account_id is None or viewer_account_id == item.account_id
    data = read_blob(conn, blobs, keys, item) if include_data else None
    return (reveal_prompt(conn, keys, item) if owner_view else _with_prompt(item, "")), data


def read_blob(conn: Connection, blobs: EncryptedBlobStore, keys: KeyStore, item: ContentItem) -> bytes:
    """The plaintext bytes of an item (decrypted with its data key)."""
    if item.encryption_key_id is None:
        return blobs.inner.get(item.blob_key)
    data_key = keys.data_key(conn, item.encryption_key_id)
    return blobs.get(item.blob_key, data_key=data_key, context=crypto.blob_context(item.content_id))


def reveal_prompt(
    conn: Connection, keys: KeyStore, item: ContentItem, cache: dict[UUID, DataKey] | None = None
) -> ContentItem:
    """The item with its prompt decrypted (for the owner's view)."""
    if item.prompt_sealed is None or item.encryption_key_id is None:
        return item
    known = cache if cache is not None else {}
    data_key = known.get(item.encryption_key_id)
    if data_key is None:
        data_key = known[item.encryption_key_id] = keys.data_key(conn, item.encryption_key_id)
    prompt = crypto.open_sealed(data_key.key, item.prompt_sealed, crypto.prompt_context(item.content_id))
    return _with_prompt(item, prompt.decode())


def list_content(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    limit: int,
    after: ContentCursor | None = None,
    keys: KeyStore | None = None,
    viewer_account_id: UUID | None = None,
) -> ContentPage:
    """Returns up to `limit` live items of an account, newest first.

    Args:
        limit: Page size, >= 1.
        after: The previous page's `next_cursor`; None for the newest items.
        keys: Decrypts prompts for the owner's view; None leaves sealed prompts empty.
        viewer_account_id: The account the caller acts for; when set and not the owner,
            only public, unflagged items are listed, without prompts.

    Raises:
        NotFound: No such account (or viewer) in the tenant.
    """
    accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
    if viewer_account_id is not None:
        accounts.get_account(conn, tenant_id=tenant_id, account_id=viewer_account_id)
    owner_view = viewer_account_id is None or viewer_account_id == account_id
    rows = conn.execute(
        f"""
        SELECT {_COLUMNS} FROM content
        WHERE account_id = %(account_id)s AND deleted_at IS NULL
          AND (%(owner_view)s OR (visibility = 'public' AND NOT flagged))
          AND (%(after_at)s::timestamptz IS NULL OR (created_at, content_id) < (%(after_at)s, %(after_id)s::uuid))
        ORDER BY created_at DESC, content_id DESC
        LIMIT %(limit)s
        """,
        {
            "account_id": account_id,
            "owner_view": owner_view,
            "after_at": after.created_at if after else None,
            "after_id": after.content_id if after else None,
            "limit": limit + 1,
        },
    ).fetchall()
    # One row more than asked tells whether another page exists.
    items = [_content_item(row) for row in rows[:limit]]
    next_cursor = ContentCursor(items[-1].created_at, items[-1].content_id) if len(rows) > limit else None
    cache: dict[UUID, DataKey] = {}
    if owner_view and keys is not None:
        items = [reveal_prompt(conn, keys, item, cache) for item in items]
    elif not owner_view:
        items = [_with_prompt(item, "") for item in items]
    return ContentPage(items=items, next_cursor=next_cursor)


def list_public_gallery(
    conn: Connection, *, tenant_id: UUID, limit: int, after: ContentCursor | None = None
) -> ContentPage:
    """Returns up to `limit` public, live, unflagged items of the tenant's accounts, newest
    first, without prompts."""
    rows = conn.execute(
        f"""
        SELECT {_COLUMNS} FROM content
        WHERE visibility = 'public' AND deleted_at IS NULL AND NOT flagged
          AND account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %(tenant_id)s AND status <> 'erased')
          AND (%(after_at)s::timestamptz IS NULL OR (created_at, content_id) < (%(after_at)s, %(after_id)s::uuid))
        ORDER BY created_at DESC, content_id DESC
        LIMIT %(limit)s
        """,
        {
            "tenant_id": tenant_id,
            "after_at": after.created_at if after else None,
            "after_id": after.content_id if after else None,
            "limit": limit + 1,
        },
    ).fetchall()
    items = [_with_prompt(_content_item(row), "") for row in rows[:limit]]
    next_cursor = ContentCursor(items[-1].created_at, items[-1].content_id) if len(rows) > limit else None
    return ContentPage(items=items, next_cursor=next_cursor)


class ContentFlagged(FailedPrecondition):
    """Moderation flagged the item, so it cannot be made public."""

    reason = "CONTENT_FLAGGED"


def set_item_visibility(
    conn: Connection,
    keys: KeyStore,
    *,
    tenant_id: UUID,
    content_id: UUID,
    visibility: Visibility,
    actor: Actor,
    now: datetime,
    account_id: UUID | None = None,
) -> tuple[int, ContentItem]:
    """Sets one item's visibility, with its audit row, in one transaction.

    Args:
        account_id: When given, the item must be this account's (else NotFound).

    Returns:
        1 when the visibility changed (else 0), and the item.

    Raises:
        NotFound: No such live item in the tenant (or of `account_id`).
        ContentFlagged: The item is flagged and `visibility` is public.
    """
    with conn.transaction():
        row = conn.execute(
            f"""
            SELECT {_COLUMNS} FROM content
            WHERE content_id = %s AND deleted_at IS NULL
              AND account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %s)
              AND (%s::uuid IS NULL OR account_id = %s)
            FOR UPDATE
            """,
            (content_id, tenant_id, account_id, account_id),
        ).fetchone()
        if row is None:
            raise NotFound(f"content {content_id} not found")
        item = _content_item(row)
        if item.flagged and visibility is Visibility.PUBLIC:
            raise ContentFlagged(f"content {content_id} was flagged by moderation and cannot be made public")
        changed = item.visibility is not visibility
        if changed:
            conn.execute("UPDATE content SET visibility = %s WHERE content_id = %s", (visibility.value, content_id))
            details = {"account_id": str(item.account_id), "visibility": visibility.value}
            record_audit(conn, actor, now, "content.visibility", "content", content_id, details)
    updated = dataclasses.replace(item, visibility=visibility)
    return int(changed), reveal_prompt(conn, keys, updated)


def set_account_visibility(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    visibility: Visibility,
    apply_to_default: bool,
    actor: Actor,
    now: datetime,
) -> int:
    """Sets the visibility of all of an account's live content at once (flagged items stay
    private), and optionally its default, with the audit row, in one transaction.

    Returns:
        How many items changed.

    Raises:
        NotFound: No such account in the tenant.
        FailedPrecondition: The account was erased.
    """
    with conn.transaction():
        account = accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
        if account.status is AccountStatus.ERASED:
            raise FailedPrecondition(f"account {account_id} was erased", reason="ACCOUNT_ERASED")
        changed = conn.execute(
            """
            UPDATE content SET visibility = %(visibility)s
            WHERE account_id = %(account_id)s AND deleted_at IS NULL AND visibility <> %(visibility)s
              AND (NOT flagged OR %(visibility)s = 'private')
            """,
            {"visibility": visibility.value, "account_id": account_id},
        ).rowcount
        if apply_to_default:
            accounts.write_default_visibility(conn, account_id, visibility)
        details = {
            "account_id": str(account_id),
            "visibility": visibility.value,
            "updated_count": changed,
            "default_changed": apply_to_default,
        }
        record_audit(conn, actor, now, "content.visibility_all", "account", account_id, details)
    return max(changed, 0)


@dataclass(frozen=True)
class _Storer:
    """The account content is stored for, as checked before anything is written."""

    account: accounts.Account
    minor: bool
    """Its holder is under the adult age: its content is marked and never exported."""
    live_key: tuple[UUID, str, bytes] | None
    """Its live data key's row (LIVE_KEY_COLUMNS); None before its first store."""


def _read_storer(conn: Connection, *, tenant_id: UUID, account_id: UUID, today: date) -> _Storer:
    # One round trip for what the account, its consent, its age evidence and its data key
    # would take four.
    row = conn.execute(
        f"""
        SELECT {_qualified("a", accounts.ACCOUNT_COLUMNS)},
               {consent.PROCESSING_ALLOWED_SQL.format(account_column="a.account_id")},
               {_qualified("p", accounts.AGE_EVIDENCE_COLUMNS)},
               {_qualified("k", LIVE_KEY_COLUMNS)}
        FROM accounts a
        LEFT JOIN account_personal p ON p.account_id = a.account_id
        LEFT JOIN account_keys k ON k.account_id = a.account_id AND k.destroyed_at IS NULL
        WHERE a.account_id = %s AND a.tenant_id = %s
        """,
        (account_id, tenant_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"account {account_id} not found")
    account = accounts.account_from_row(row[:7])
    accounts.require_active(account)
    if not row[7]:
        raise consent.GuardianConsentRequired(account_id)
    birth_date, age_attested, recorded_at, key_id, master_key_id, wrapped = row[8:]
    age = accounts.age_from_evidence(birth_date, age_attested, recorded_at, today)
    return _Storer(
        account=account,
        minor=age is not None and accounts.is_minor(age),
        live_key=(key_id, master_key_id, bytes(wrapped)) if key_id is not None else None,
    )


def _qualified(alias: str, columns: str) -> str:
    return ", ".join(f"{alias}.{column}" for column in columns.split(", "))


def _start_writing(
    writer: Executor | None,
    blobs: EncryptedBlobStore,
    prepared: Sequence[ContentItem],
    items: Sequence[NewContent],
    data_key: DataKey,
) -> Future[None]:
    def write() -> None:
        for stored, item in zip(prepared, items, strict=True):
            blobs.put(stored.blob_key, item.data, data_key=data_key, context=crypto.blob_context(stored.content_id))

    if writer is not None:
        return writer.submit(write)
    done: Future[None] = Future()
    write()
    done.set_result(None)
    return done


# Everything a store changes, in one statement: the account row is locked first (an erasure
# locks it FOR UPDATE, so the two are ordered and the checks see its outcome; not FOR SHARE,
# as the statement updates the row, and two shared holders upgrading at once would deadlock);
# only while it is active, its data key live, and the reservation (when one is named) charged,
# are the rows inserted, the activity touched and the audit rows written.
_STORE_SQL = f"""
    WITH storer AS (
        SELECT a.account_id, a.status, k.destroyed_at
        FROM accounts a JOIN account_keys k ON k.account_id = a.account_id
        WHERE a.account_id = %(account_id)s AND k.key_id = %(key_id)s
        FOR NO KEY UPDATE OF a
    ), storable AS (
        SELECT account_id FROM storer WHERE status = 'active' AND destroyed_at IS NULL
    ), {credits.commit_ctes_sql(guard="EXISTS (SELECT 1 FROM storable)")},
    paid AS (
        SELECT EXISTS (SELECT 1 FROM storable)
               AND (%(reservation_id)s::uuid IS NULL OR EXISTS (SELECT 1 FROM reservation)) AS ok
    ), stored AS (
        INSERT INTO content (content_id, account_id, kind, media_type, visibility, blob_key, sha256, size_bytes,
                             prompt, parameters, model, reservation_id, created_at, expires_at, flagged,
                             encryption_key_id, prompt_sealed, created_by_minor)
        SELECT i.content_id, %(account_id)s, i.kind, i.media_type, i.visibility, i.blob_key, i.sha256,
               i.size_bytes, '', i.parameters, i.model, %(reservation_id)s, %(now)s, i.expires_at, i.flagged,
               %(key_id)s, i.prompt_sealed, %(minor)s
        FROM unnest(%(content_ids)s::uuid[], %(kinds)s::text[], %(media_types)s::text[], %(visibilities)s::text[],
                    %(blob_keys)s::text[], %(sha256s)s::text[], %(sizes)s::bigint[], %(parameters)s::jsonb[],
                    %(models)s::text[], %(expires_ats)s::timestamptz[], %(flagged)s::boolean[],
                    %(prompts_sealed)s::bytea[])
             WITH ORDINALITY AS i (content_id, kind, media_type, visibility, blob_key, sha256, size_bytes,
                                   parameters, model, expires_at, flagged, prompt_sealed, position)
        WHERE (SELECT ok FROM paid)
        ORDER BY i.position
        RETURNING content_id, kind, size_bytes
    ), touched AS (
        UPDATE accounts SET last_active_at = greatest(last_active_at, %(now)s)
        WHERE account_id = %(account_id)s AND (SELECT ok FROM paid)
    ), store_audit AS ({
    audit_rows_sql(
        action="content.store",
        target_type="content",
        target_id="content_id::text",
        details=(
            "jsonb_build_object('account_id', %(account_id)s::text, 'kind', kind, 'size_bytes', size_bytes, "
            "'encryption_key_id', %(key_id)s::text)"
        ),
        source="stored",
    )
})
    SELECT s.status, s.destroyed_at, (SELECT ok FROM paid),
           r.*, coalesce(b.total, current.total), coalesce(b.held, current.held)
    FROM (SELECT 1) AS one
    LEFT JOIN storer s ON true
    LEFT JOIN reservation r ON true
    LEFT JOIN balance b ON true
    LEFT JOIN credit_balances current ON current.account_id = %(account_id)s
"""


def _insert_paid_rows(
    conn: Connection,
    prepared: Sequence[ContentItem],
    *,
    tenant_id: UUID,
    data_key: DataKey,
    reservation_id: UUID | None,
    minor: bool,
    actor: Actor,
    now: datetime,
) -> tuple[credits.Reservation | None, credits.Balance]:
    # Call inside a transaction (the flags and the blobs' durability follow before COMMIT).
    account_id = prepared[0].account_id
    row = expect_row(
        conn.execute(
            _STORE_SQL,
            {
                "account_id": account_id,
                "tenant_id": tenant_id,
                "key_id": data_key.key_id,
                "reservation_id": reservation_id,
                "minor": minor,
                "now": now,
                **actor_parameters(actor),
                "content_ids": [c.content_id for c in prepared],
                "kinds": [c.kind.value for c in prepared],
                "media_types": [c.media_type for c in prepared],
                "visibilities": [c.visibility.value for c in prepared],
                "blob_keys": [c.blob_key for c in prepared],
                "sha256s": [c.sha256 for c in prepared],
                "sizes": [c.size_bytes for c in prepared],
                "parameters": [Jsonb(dict(c.parameters)) for c in prepared],
                "models": [c.model for c in prepared],
                "expires_ats": [c.expires_at for c in prepared],
                "flagged": [c.flagged for c in prepared],
                "prompts_sealed": [c.prompt_sealed for c in prepared],
            },
        ).fetchone()
    )
    status, destroyed_at, paid = row[:3]
    if status != AccountStatus.ACTIVE.value:
        raise AccountNotActive(account_id, status if status is not None else AccountStatus.ERASED.value)
    if destroyed_at is not None:
        raise DataKeyDestroyed(f"account {account_id}'s data key was destroyed by an erasure")
    if not paid and reservation_id is not None:
        credits.raise_why_not_committed(conn, tenant_id=tenant_id, reservation_id=reservation_id, account_id=account_id)
    reservation = credits.reservation_from_row(row[3:-2]) if reservation_id is not None else None
    return reservation, credits.Balance(account_id=account_id, total=row[-2], held=row[-1])


def _mark(
    conn: Connection,
    blobs: EncryptedBlobStore,
    keys: KeyStore,
    marker: ProvenanceMarker,
    account: accounts.Account,
    items: Sequence[NewContent],
    content_ids: Sequence[UUID],
    flagged: Sequence[bool],
    *,
    minor: bool,
    now: datetime,
) -> dict[int, Mark]:
    """The provenance marks of the generated items, by index (uploads are the caller's files)."""
    generated = [i for i, item in enumerate(items) if item.kind is ContentKind.GENERATED]
    to_mark = [
        ItemToMark(
            content_id=content_ids[i],
            png=items[i].data,
            field=f"items[{i}].data",
            model=str(items[i].parameters.get("model", "")),
            model_version=items[i].model_version,
            watermark=items[i].watermark,
            # As `_prepare` will store it: flagged items are private.
            visibility=(Visibility.PRIVATE if flagged[i] else items[i].visibility or account.default_visibility).value,
            flagged=flagged[i],
            source_content_id=_source_content_id(f"items[{i}].parameters.source_content_id", items[i]),
        )
        for i in generated
    ]
    marks = marker.mark(conn, blobs, keys, account_id=account.account_id, minor=minor, items=to_mark, now=now)
    return dict(zip(generated, marks, strict=True))


def _source_content_id(field: str, item: NewContent) -> UUID | None:
    source = item.parameters.get("source_content_id")
    if not source:
        return None
    try:
        return UUID(str(source))
    except ValueError:
        raise InvalidArgument(field, "must be the upload's content id (a UUID)") from None


def _prepare(
    account: accounts.Account, item: NewContent, now: datetime, data_key: DataKey, content_id: UUID, *, flagged: bool
) -> ContentItem:
    model = item.parameters.get("model", "")
    visibility = item.visibility or account.default_visibility
    return ContentItem(
        content_id=content_id,
        account_id=account.account_id,
        kind=item.kind,
        media_type=item.media_type,
        sha256=hashlib.sha256(item.data).hexdigest(),
        size_bytes=len(item.data),
        visibility=Visibility.PRIVATE if flagged else visibility,
        # The prompt is kept only sealed; the clear column stays empty.
        prompt="",
        parameters=dict(item.parameters),
        model=model if isinstance(model, str) else "",
        created_at=now,
        # Retention rules (per policy profile) are applied by the retention issue's sweeper.
        expires_at=None,
        blob_key=f"{account.account_id}/{content_id}",
        flagged=flagged,
        encryption_key_id=data_key.key_id,
        prompt_sealed=(
            crypto.seal(data_key.key, item.prompt.encode(), crypto.prompt_context(content_id)) if item.prompt else None
        ),
    )


def _delete_quietly(blobs: BlobStore | EncryptedBlobStore, keys: Sequence[str]) -> None:
    # Runs while another exception propagates: a failed delete is logged, not raised, so
    # the caller sees the original error. A blob left behind has no row and is harmless.
    try:
        blobs.delete_many(keys)
    except Exception:
        _logger.warning("could not delete blobs of a failed store blob_keys=%s", ",".join(keys), exc_info=True)


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
        flagged,
        encryption_key_id,
        prompt_sealed,
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
        flagged=flagged,
        encryption_key_id=encryption_key_id,
        prompt_sealed=bytes(prompt_sealed) if prompt_sealed is not None else None,
    )


def _with_prompt(item: ContentItem, prompt: str) -> ContentItem:
    return dataclasses.replace(item, prompt=prompt)
