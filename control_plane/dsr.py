"""Data-subject requests: export of everything held about an account, and erasure.

Every request is a `dsr_requests` row with its state and due date (received + the profile's
`dsr_due_days`). Requests are answered at once; one that fails part-way stays open and shows
in `atelier dsr list --overdue` once its deadline passes.

Export builds a ZIP (JSON for the account, consents, ledger, content metadata, moderation
flags and audit entries; the decrypted images as files), stored sealed with the account's
data key (so an erasure makes it unreadable too) and fetched with `get_export_archive`.
Flagged content is never exported.

Erasure of an account destroys its data key first (in the same transaction that marks it
erased and deletes its content rows and personal data), then deletes the blobs: copies of
the blobs anywhere, backups included, can no longer be decrypted. The account row stays as
a pseudonymous tombstone so ledger and audit rows keep pointing at something (DESIGN.md §9).
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any
from uuid import UUID, uuid4

from control_plane import accounts, audit, consent, content, credits, crypto
from control_plane.accounts import AccountStatus
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.keystore import KeyStore
from control_plane.audit import Actor, record_audit
from control_plane.db.pool import Connection, expect_row
from control_plane.errors import FailedPrecondition, NotFound
from control_plane.policy import PolicyProfile, PolicyRegistry
from control_plane.provenance.status import ItemProvenance, item_provenance

_logger = logging.getLogger(__name__)

_COLUMNS = (
    "dsr_id, account_id, kind, state, received_at, due_at, completed_at, content_id, result_location, "
    "archive_size_bytes"
)
ARCHIVE_MEDIA_TYPE = "application/zip"
_EXPORT_PAGE = 1000


class DsrKind(StrEnum):
    """What the data subject asked for."""

    EXPORT = "export"
    ERASURE = "erasure"


class DsrState(StrEnum):
    """Where a request stands."""

    RECEIVED = "received"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    REJECTED = "rejected"


@dataclass(frozen=True)
class DsrRequest:
    """A `dsr_requests` row."""

    dsr_id: UUID
    account_id: UUID
    kind: DsrKind
    state: DsrState
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None
    content_id: UUID | None
    result_location: str | None
    archive_size_bytes: int

    def overdue(self, as_of: datetime) -> bool:
        """Still open after its due date."""
        return self.state in (DsrState.RECEIVED, DsrState.IN_PROGRESS) and self.due_at < as_of


def record_request(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID,
    kind: DsrKind,
    profile: PolicyProfile,
    actor: Actor,
    now: datetime,
    content_id: UUID | None = None,
) -> DsrRequest:
    """Records a received request (state `received`, due in the profile's days), with its audit row.

    Raises:
        NotFound: No such account in the tenant.
    """
    accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
    with conn.transaction():
        return _insert_request(conn, account_id, kind, profile, actor, now, content_id)


def request_export(
    conn: Connection,
    blobs: EncryptedBlobStore,
    keys: KeyStore,
    *,
    tenant_id: UUID,
    account_id: UUID,
    profile: PolicyProfile,
    policies: PolicyRegistry,
    actor: Actor,
    now: datetime,
) -> DsrRequest:
    """Records an export request and answers it: builds the archive and stores it sealed.

    `policies` decide each item's current training eligibility, reported beside what its file says.

    Raises:
        NotFound: No such account in the tenant.
        FailedPrecondition: The account was erased (reason ACCOUNT_ERASED).
    """
    account = accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
    _require_not_erased(account)
    with conn.transaction():
        request = _insert_request(conn, account_id, DsrKind.EXPORT, profile, actor, now, None)
        conn.execute("UPDATE dsr_requests SET state = 'in_progress' WHERE dsr_id = %s", (request.dsr_id,))
    archive = build_export_archive(conn, blobs, keys, policies, tenant_id=tenant_id, account_id=account_id, now=now)
    data_key = keys.live_data_key(conn, account_id, actor=actor, now=now)
    location = f"{account_id}/exports/{request.dsr_id}"
    blobs.put(location, archive, data_key=data_key, context=crypto.archive_context(request.dsr_id))
    with conn.transaction():
        row = conn.execute(
            f"""
            UPDATE dsr_requests SET state = 'completed', completed_at = %s, result_location = %s,
                                    archive_size_bytes = %s
            WHERE dsr_id = %s
            RETURNING {_COLUMNS}
            """,
            (now, location, len(archive), request.dsr_id),
        ).fetchone()
        details = {"account_id": str(account_id), "kind": "export", "archive_size_bytes": len(archive)}
        record_audit(conn, actor, now, "dsr.complete", "dsr_request", request.dsr_id, details)
    return _request(expect_row(row))


def get_export_archive(
    conn: Connection,
    blobs: EncryptedBlobStore,
    keys: KeyStore,
    *,
    tenant_id: UUID,
    dsr_id: UUID,
    account_id: UUID | None = None,
) -> bytes:
    """The ZIP archive of a completed export.

    Args:
        account_id: When given, the export must be of this account (else NotFound).

    Raises:
        NotFound: No such export request in the tenant (or of `account_id`).
        FailedPrecondition: The export is not completed (reason EXPORT_NOT_READY), or the
            account was erased since (its key is gone: reason DATA_KEY_DESTROYED).
    """
    request = get_request(conn, tenant_id=tenant_id, dsr_id=dsr_id)
    if request.kind is not DsrKind.EXPORT or account_id not in (None, request.account_id):
        raise NotFound(f"export {dsr_id} not found")
    if request.state is not DsrState.COMPLETED or request.result_location is None:
        raise FailedPrecondition(
            f"export {dsr_id} is {request.state.value}; try again later", reason="EXPORT_NOT_READY"
        )
    row = conn.execute(
        "SELECT key_id FROM account_keys WHERE account_id = %s AND destroyed_at IS NULL", (request.account_id,)
    ).fetchone()
    if row is None:
        raise FailedPrecondition(f"export {dsr_id} belongs to an erased account", reason="DATA_KEY_DESTROYED")
    data_key = keys.data_key(conn, row[0])
    return blobs.get(request.result_location, data_key=data_key, context=crypto.archive_context(dsr_id))


def request_erasure(
    conn: Connection,
    blobs: EncryptedBlobStore,
    keys: KeyStore,
    *,
    tenant_id: UUID,
    account_id: UUID,
    content_id: UUID | None,
    profile: PolicyProfile,
    actor: Actor,
    now: datetime,
) -> DsrRequest:
    """Erases one item (`content_id`) or the whole account, at once; returns the completed request.

    One item: its row goes (unreadable and unlisted at once), then its blob.
    The account: in one transaction the data key is destroyed, content rows and personal data
    deleted, flags' prompt copies cleared and the account marked erased; then its blobs
    (content and export archives) are deleted. Ledger, consent and audit rows stay, keyed by
    the pseudonymous account id.

    Raises:
        NotFound: No such account in the tenant, or no such live item of the account.
        FailedPrecondition: The account was already erased (reason ACCOUNT_ERASED).
    """
    account = accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
    _require_not_erased(account)
    blob_keys: list[str]
    with conn.transaction():
        request = _insert_request(conn, account_id, DsrKind.ERASURE, profile, actor, now, content_id)
        if content_id is not None:
            blob_keys = _erase_item(conn, account_id, content_id, actor, now)
        else:
            blob_keys = _erase_account(conn, keys, account_id, actor, now)
        row = conn.execute(
            f"UPDATE dsr_requests SET state = 'completed', completed_at = %s WHERE dsr_id = %s RETURNING {_COLUMNS}",
            (now, request.dsr_id),
        ).fetchone()
        details = {"account_id": str(account_id), "kind": "erasure", "blobs": len(blob_keys)}
        record_audit(conn, actor, now, "dsr.complete", "dsr_request", request.dsr_id, details)
    try:
        blobs.delete_many(blob_keys)
    except Exception:
        # The rows are gone (and for an account the key too): a leftover blob is unreadable
        # ciphertext; the log lets an operator remove it.
        _logger.warning("erasure may have left blobs behind blob_keys=%s", ",".join(blob_keys), exc_info=True)
    return _request(expect_row(row))


def get_request(conn: Connection, *, tenant_id: UUID, dsr_id: UUID) -> DsrRequest:
    """A request of the tenant's accounts.

    Raises:
        NotFound: No such request in the tenant.
    """
    row = conn.execute(
        f"""
        SELECT {_COLUMNS} FROM dsr_requests
        WHERE dsr_id = %s AND account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %s)
        """,
        (dsr_id, tenant_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"data-subject request {dsr_id} not found")
    return _request(row)


def list_requests(
    conn: Connection,
    *,
    tenant_id: UUID,
    account_id: UUID | None,
    overdue_only: bool,
    as_of: datetime,
    limit: int,
) -> list[DsrRequest]:
    """The tenant's requests (one account's when given), earliest due date first.

    Args:
        overdue_only: Only requests still open after their due date at `as_of`.
    """
    rows = conn.execute(
        f"""
        SELECT {_COLUMNS} FROM dsr_requests
        WHERE account_id IN (SELECT account_id FROM accounts WHERE tenant_id = %(tenant_id)s)
          AND (%(account_id)s::uuid IS NULL OR account_id = %(account_id)s)
          AND (NOT %(overdue)s OR (state IN ('received', 'in_progress') AND due_at < %(as_of)s))
        ORDER BY due_at, dsr_id
        LIMIT %(limit)s
        """,
        {"tenant_id": tenant_id, "account_id": account_id, "overdue": overdue_only, "as_of": as_of, "limit": limit},
    ).fetchall()
    return [_request(row) for row in rows]


def build_export_archive(
    conn: Connection,
    blobs: EncryptedBlobStore,
    keys: KeyStore,
    policies: PolicyRegistry,
    *,
    tenant_id: UUID,
    account_id: UUID,
    now: datetime,
) -> bytes:
    """The ZIP of everything held about the account (see the module docstring)."""
    account = accounts.get_account(conn, tenant_id=tenant_id, account_id=account_id)
    personal = conn.execute(
        "SELECT birth_date, age_attested, guardian_required, recorded_at FROM account_personal WHERE account_id = %s",
        (account_id,),
    ).fetchone()
    account_json: dict[str, Any] = {
        "account_id": str(account.account_id),
        "tenant_id": str(account.tenant_id),
        "tier": account.tier.value,
        "status": account.status.value,
        "default_visibility": account.default_visibility.value,
        "created_at": account.created_at.isoformat(),
        "last_active_at": account.last_active_at.isoformat(),
        "personal": (
            {
                "birth_date": personal[0].isoformat() if personal[0] else None,
                "age_attested": personal[1],
                "guardian_consent_required": personal[2],
                "recorded_at": personal[3].isoformat(),
            }
            if personal is not None
            else None
        ),
        "exported_at": now.isoformat(),
    }
    consents = [
        {
            "consent_id": r.consent_id,
            "purpose": r.purpose.value,
            "granted": r.granted,
            "method": r.method.value,
            "source": r.source,
            "policy_version": r.policy_version,
            "recorded_at": r.recorded_at.isoformat(),
        }
        for r in consent.consent_history(conn, tenant_id=tenant_id, account_id=account_id)
    ]
    ledger = _whole_ledger(conn, tenant_id, account_id)
    items = _all_content(conn, keys, tenant_id, account_id)
    marks = item_provenance(conn, policies, now=now, account_id=account_id)
    flags = [
        {
            "flag_id": row[0],
            "content_id": str(row[1]) if row[1] else None,
            "stage": row[2],
            "category": row[3],
            "rule": row[4],
            "action": row[5],
            "created_at": row[6].isoformat(),
        }
        for row in conn.execute(
            """
            SELECT flag_id, content_id, stage, category, rule, action, created_at FROM moderation_flags
            WHERE account_id = %s ORDER BY flag_id
            """,
            (account_id,),
        ).fetchall()
    ]
    audit_rows = [
        {
            "id": r.id,
            "at": r.at.isoformat(),
            "actor_key_id": r.actor_key_id,
            "action": r.action,
            "target_type": r.target_type,
            "target_id": r.target_id,
            "details": r.details,
        }
        for r in audit.list_account_audit(conn, account_id, limit=100_000)
    ]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        _write_json(archive, "account.json", account_json)
        _write_json(archive, "consents.json", consents)
        _write_json(archive, "ledger.json", ledger)
        _write_json(archive, "content.json", [_content_json(item, marks.get(item.content_id)) for item in items])
        _write_json(archive, "moderation_flags.json", flags)
        _write_json(archive, "audit.json", audit_rows)
        for item in items:
            # PNGs are already compressed.
            archive.writestr(
                f"images/{item.content_id}.png",
                content.read_blob(conn, blobs, keys, item),
                compress_type=zipfile.ZIP_STORED,
            )
    return buffer.getvalue()


def _insert_request(
    conn: Connection,
    account_id: UUID,
    kind: DsrKind,
    profile: PolicyProfile,
    actor: Actor,
    now: datetime,
    content_id: UUID | None,
) -> DsrRequest:
    row = conn.execute(
        f"""
        INSERT INTO dsr_requests (dsr_id, account_id, kind, state, received_at, due_at, content_id,
                                  requested_by_key_id)
        VALUES (%s, %s, %s, 'received', %s, %s, %s, %s)
        RETURNING {_COLUMNS}
        """,
        (uuid4(), account_id, kind.value, now, now + timedelta(days=profile.dsr_due_days), content_id, actor.key_id),
    ).fetchone()
    request = _request(expect_row(row))
    details: dict[str, Any] = {"account_id": str(account_id), "kind": kind.value, "due_at": request.due_at.isoformat()}
    if content_id is not None:
        details["content_id"] = str(content_id)
    record_audit(conn, actor, now, "dsr.receive", "dsr_request", request.dsr_id, details)
    return request


def _erase_item(conn: Connection, account_id: UUID, content_id: UUID, actor: Actor, now: datetime) -> list[str]:
    # Flags outlive the item (their content_id becomes NULL); a prompt copy does not.
    conn.execute("UPDATE moderation_flags SET prompt_text = NULL WHERE content_id = %s", (content_id,))
    row = conn.execute(
        "DELETE FROM content WHERE content_id = %s AND account_id = %s RETURNING blob_key",
        (content_id, account_id),
    ).fetchone()
    if row is None:
        raise NotFound(f"content {content_id} of account {account_id} not found")
    record_audit(conn, actor, now, "content.erase", "content", content_id, {"account_id": str(account_id)})
    return [row[0]]


def _erase_account(conn: Connection, keys: KeyStore, account_id: UUID, actor: Actor, now: datetime) -> list[str]:
    conn.execute("SELECT 1 FROM accounts WHERE account_id = %s FOR UPDATE", (account_id,))
    # The key first: from here on every copy of the account's ciphertexts is unreadable.
    destroyed = keys.destroy_account_keys(conn, account_id, now)
    content_keys = [
        row[0]
        for row in conn.execute(
            "DELETE FROM content WHERE account_id = %s RETURNING blob_key", (account_id,)
        ).fetchall()
    ]
    archive_keys = [
        row[0]
        for row in conn.execute(
            "SELECT result_location FROM dsr_requests WHERE account_id = %s AND result_location IS NOT NULL",
            (account_id,),
        ).fetchall()
    ]
    conn.execute("DELETE FROM account_personal WHERE account_id = %s", (account_id,))
    conn.execute("UPDATE moderation_flags SET prompt_text = NULL WHERE account_id = %s", (account_id,))
    conn.execute("UPDATE accounts SET status = 'erased', erased_at = %s WHERE account_id = %s", (now, account_id))
    details = {
        "account_id": str(account_id),
        "data_keys_destroyed": destroyed,
        "content_erased": len(content_keys),
    }
    record_audit(conn, actor, now, "account.erase", "account", account_id, details)
    return content_keys + archive_keys


def _require_not_erased(account: accounts.Account) -> None:
    if account.status is AccountStatus.ERASED:
        raise FailedPrecondition(f"account {account.account_id} was erased", reason="ACCOUNT_ERASED")


def _whole_ledger(conn: Connection, tenant_id: UUID, account_id: UUID) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    before: int | None = None
    while True:
        page = credits.list_ledger(
            conn, tenant_id=tenant_id, account_id=account_id, limit=_EXPORT_PAGE, before_entry_id=before
        )
        entries.extend(
            {
                "entry_id": e.entry_id,
                "delta": e.delta,
                "kind": e.kind,
                "reservation_id": str(e.reservation_id) if e.reservation_id else None,
                "reason": e.reason,
                "created_at": e.created_at.isoformat(),
            }
            for e in page.entries
        )
        if page.next_before_entry_id is None:
            return entries
        before = page.next_before_entry_id


def _all_content(conn: Connection, keys: KeyStore, tenant_id: UUID, account_id: UUID) -> list[content.ContentItem]:
    items: list[content.ContentItem] = []
    after: content.ContentCursor | None = None
    while True:
        page = content.list_content(
            conn, tenant_id=tenant_id, account_id=account_id, limit=_EXPORT_PAGE, after=after, keys=keys
        )
        # Flagged content is never exported.
        items.extend(item for item in page.items if not item.flagged)
        if page.next_cursor is None:
            return items
        after = page.next_cursor


def _content_json(item: content.ContentItem, marks: ItemProvenance | None) -> dict[str, Any]:
    return {
        # What the file's signed manifest says about training, beside the item's eligibility now.
        "provenance": marks.as_json() if marks is not None else None,
        "content_id": str(item.content_id),
        "kind": item.kind.value,
        "media_type": item.media_type,
        "sha256": item.sha256,
        "size_bytes": item.size_bytes,
        "visibility": item.visibility.value,
        "prompt": item.prompt,
        "parameters": dict(item.parameters),
        "created_at": item.created_at.isoformat(),
        "expires_at": item.expires_at.isoformat() if item.expires_at else None,
        "file": f"images/{item.content_id}.png",
    }


def _write_json(archive: zipfile.ZipFile, name: str, value: Any) -> None:
    archive.writestr(name, json.dumps(value, indent=2, sort_keys=True, default=str))


def _request(row: Sequence[Any]) -> DsrRequest:
    dsr_id, account_id, kind, state, received_at, due_at, completed_at, content_id, location, size = row
    return DsrRequest(
        dsr_id=dsr_id,
        account_id=account_id,
        kind=DsrKind(kind),
        state=DsrState(state),
        received_at=received_at,
        due_at=due_at,
        completed_at=completed_at,
        content_id=content_id,
        result_location=location,
        archive_size_bytes=size,
    )
