"""Marking generated images as StoreContent stores them: watermark, then the signed manifest.

Called by `content.store_content` after validation and moderation and before the bytes are
encrypted and written, so the stored file, the response, DSR and training exports are one
signed file. `record_marks` writes what was marked in the store's transaction.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from PIL import Image

from control_plane import crypto, eligibility
from control_plane.adapters.encrypted_blobs import EncryptedBlobStore
from control_plane.adapters.keystore import KeyStore
from control_plane.db.pool import Connection
from control_plane.errors import InvalidArgument, NotFound
from control_plane.policy import PolicyRegistry
from control_plane.provenance import watermark
from control_plane.provenance.certificates import SigningCredentials
from control_plane.provenance.manifest import ManifestFacts, TrainingUse, sign_png


@dataclass(frozen=True)
class ItemToMark:
    """A generated item StoreContent is about to store."""

    content_id: UUID
    png: bytes
    field: str
    """The request field its bytes came in, e.g. `items[0].data`, for errors."""
    model: str
    model_version: str
    watermark: bool
    """The model's setting: False stores it without a watermark (the manifest is still signed)."""
    visibility: str
    flagged: bool
    source_content_id: UUID | None
    """An edit's upload, signed in as the parent ingredient."""


@dataclass(frozen=True)
class Mark:
    """What was marked into one item."""

    content_id: UUID
    png: bytes
    """The marked file: these are the bytes stored and returned."""
    manifest_label: str
    training_use: TrainingUse
    model_version: str
    watermark_payload: int | None
    watermark_skipped: str | None
    """Why there is no watermark, when there is none."""


@dataclass(frozen=True)
class ProvenanceMarker:
    """Marks generated images with the deployment's credentials and watermark key."""

    credentials: SigningCredentials
    policies: PolicyRegistry

    def mark(
        self,
        conn: Connection,
        blobs: EncryptedBlobStore,
        keys: KeyStore,
        *,
        account_id: UUID,
        minor: bool,
        items: Sequence[ItemToMark],
        now: datetime,
    ) -> list[Mark]:
        """Watermarks and signs each item, in order.

        The training assertion is the item's eligibility at `now` (`eligibility.new_item_ineligibility`).

        Raises:
            NotFound: An edit names an upload the account does not have.
        """
        watermark_key = keys.watermark_key()
        # Items of one store differ only in visibility and flag: one eligibility query per combination.
        reasons = {
            (visibility, flagged): eligibility.new_item_ineligibility(
                conn,
                self.policies,
                account_id=account_id,
                kind="generated",
                visibility=visibility,
                flagged=flagged,
                minor=minor,
                now=now,
            )
            for visibility, flagged in {(item.visibility, item.flagged) for item in items}
        }
        marks = []
        for item in items:
            reason = reasons[item.visibility, item.flagged]
            payload, skipped, png = _watermarked(item, watermark_key)
            use = TrainingUse.ALLOWED if reason is None else TrainingUse.NOT_ALLOWED
            ingredient = (
                _upload_png(conn, blobs, keys, account_id, item.source_content_id)
                if item.source_content_id is not None
                else None
            )
            signed, label = sign_png(
                png,
                ManifestFacts(item.content_id, item.model, item.model_version, now, use, ingredient),
                self.credentials,
            )
            marks.append(Mark(item.content_id, signed, label, use, item.model_version, payload, skipped))
        return marks


def record_marks(conn: Connection, marks: Sequence[Mark]) -> None:
    """Inserts the marks' rows (inside the store's transaction, after the content rows)."""
    with conn.cursor() as cur:
        cur.executemany(
            """
            INSERT INTO content_provenance (content_id, manifest_label, training_use, model_version,
                                            watermark_payload, watermark_skipped)
            VALUES (%s, %s, %s, %s, %s, %s)
            """,
            [
                (
                    m.content_id,
                    m.manifest_label,
                    m.training_use.value,
                    m.model_version,
                    m.watermark_payload,
                    m.watermark_skipped,
                )
                for m in marks
            ],
        )


def _watermarked(item: ItemToMark, key: bytes) -> tuple[int | None, str | None, bytes]:
    if not item.watermark:
        return None, watermark.SKIPPED_DISABLED, item.png
    try:
        with Image.open(io.BytesIO(item.png), formats=("PNG",)) as image:
            width, height = image.size
        if not watermark.fits(width, height):
            return None, watermark.SKIPPED_TOO_SMALL, item.png
        payload = watermark.payload_for(key, item.content_id)
        return payload, None, watermark.embed_in_png(item.png, payload)
    except (OSError, SyntaxError, ValueError) as error:
        # The chunk structure was checked before; the pixels are only decoded here.
        raise InvalidArgument(item.field, f"is a PNG whose pixels cannot be decoded ({error})") from None


def _upload_png(
    conn: Connection, blobs: EncryptedBlobStore, keys: KeyStore, account_id: UUID, upload_id: UUID
) -> bytes:
    row = conn.execute(
        """
        SELECT blob_key, encryption_key_id FROM content
        WHERE content_id = %s AND account_id = %s AND kind = 'upload' AND deleted_at IS NULL
        """,
        (upload_id, account_id),
    ).fetchone()
    if row is None or row[1] is None:
        raise NotFound(f"upload {upload_id} not found: store the init image first")
    return blobs.get(row[0], data_key=keys.data_key(conn, row[1]), context=crypto.blob_context(upload_id))
