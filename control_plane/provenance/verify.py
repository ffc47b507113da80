"""Verifying a file's provenance: what its manifest and its watermark say, and whose it is.

A file says what its marks say to anyone. Which content it is (id, model, creation time,
current training eligibility) is told only to the tenant that owns it, found through its
watermark payload (recorded per item) or through a trusted manifest's content id.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from uuid import UUID

import numpy as np
from PIL import Image

from control_plane.db.pool import Connection
from control_plane.errors import InvalidArgument
from control_plane.policy import PolicyRegistry
from control_plane.provenance import watermark
from control_plane.provenance.manifest import ManifestReading, ManifestStatus, read_manifest
from control_plane.provenance.status import item_provenance

MAX_FILE_BYTES = 32 * 1024 * 1024
MAX_PIXELS = 8192 * 8192
_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class WatermarkStatus(StrEnum):
    """What the pixels say."""

    FOUND = "found"
    """A payload of one of the caller's tenant's items."""
    NOT_FOUND = "not_found"
    """No payload of the caller's tenant's items (none, or another tenant's)."""
    TOO_SMALL = "too_small"
    """Too small to carry a watermark."""


@dataclass(frozen=True)
class OwnedContent:
    """The caller's tenant's item the file is."""

    content_id: UUID
    model: str
    created_at: datetime
    identified_by: str
    """"watermark" or "manifest"."""
    training_use_when_made: str
    """What the file's training assertion said when it was made ('allowed' / 'notAllowed')."""
    eligible_for_training: bool
    """Whether it may be used for training now (the opt-out registry and consents as of now)."""
    training_explanation: str


@dataclass(frozen=True)
class ProvenanceReport:
    """VerifyProvenance's answer."""

    media_type: str
    manifest: ManifestReading
    watermark: WatermarkStatus
    watermark_bit_errors: int
    """Bits of the read payload that differ from the recorded one (FOUND only)."""
    content: OwnedContent | None


def verify_provenance(
    conn: Connection,
    policies: PolicyRegistry,
    *,
    tenant_id: UUID,
    viewer_account_id: UUID | None,
    data: bytes,
    trust_anchors_pem: bytes,
    now: datetime,
) -> ProvenanceReport:
    """Reads `data`'s manifest and watermark and finds the item among the tenant's content.

    Args:
        viewer_account_id: The account the caller acts for; when set, only that account's
            items are identified.

    Raises:
        InvalidArgument: `data` (field `data`) is empty, over 32 MiB, not a PNG, JPEG or WebP
            image, or truncated or corrupt; the message says which.
    """
    media_type, rgb = decode_image(data)
    manifest = read_manifest(data, media_type, trust_anchors_pem)
    found: tuple[UUID, int] | None = None
    # Stays TOO_SMALL when the image (as it is and scaled back) is too small to be read.
    status = WatermarkStatus.TOO_SMALL
    for payload in watermark.read_payloads(rgb):
        status = WatermarkStatus.NOT_FOUND
        found = _item_with_payload(conn, tenant_id, viewer_account_id, payload)
        if found is not None:
            status = WatermarkStatus.FOUND
            break
    content_id, identified_by = (found[0], "watermark") if found is not None else (None, "")
    if content_id is None and manifest.status is ManifestStatus.TRUSTED and manifest.content_id:
        content_id, identified_by = _parse_uuid(manifest.content_id), "manifest"
    owned = (
        _owned(conn, policies, tenant_id, viewer_account_id, content_id, identified_by, now)
        if content_id is not None
        else None
    )
    return ProvenanceReport(media_type, manifest, status, found[1] if found is not None else 0, owned)


def decode_image(data: bytes) -> tuple[str, np.ndarray]:
    """The media type and RGB pixels of a PNG, JPEG or WebP file.

    Raises:
        InvalidArgument: See `verify_provenance`.
    """
    if not data:
        raise InvalidArgument("data", "must not be empty: send the image file's bytes")
    if len(data) > MAX_FILE_BYTES:
        raise InvalidArgument("data", f"must be at most {MAX_FILE_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=tuple(_FORMATS)) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise InvalidArgument("data", f"must have at most {MAX_PIXELS} pixels")
                media_type = _FORMATS[str(image.format)]
                image.load()
                rgb = np.asarray(image.convert("RGB"))
    except InvalidArgument:
        raise
    except Image.UnidentifiedImageError:
        raise InvalidArgument("data", "is not a PNG, JPEG or WebP image") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning) as error:
        raise InvalidArgument("data", f"is a truncated or corrupt image file ({error})") from None
    return media_type, rgb


def _item_with_payload(
    conn: Connection, tenant_id: UUID, viewer_account_id: UUID | None, payload: int
) -> tuple[UUID, int] | None:
    # Exact first (an index look-up); then the nearest within MAX_BIT_ERRORS, a scan of the
    # tenant's watermarked items (JPEG at quality 75 flips a bit or two).
    for exact in (True, False):
        row = conn.execute(
            f"""
            SELECT p.content_id, bit_count((p.watermark_payload # %(payload)s)::bit(64)) AS errors
            FROM content_provenance p
            JOIN content c USING (content_id)
            JOIN accounts a ON a.account_id = c.account_id
            WHERE a.tenant_id = %(tenant)s AND (%(viewer)s::uuid IS NULL OR c.account_id = %(viewer)s::uuid)
              AND {"p.watermark_payload = %(payload)s" if exact else "p.watermark_payload IS NOT NULL"}
            ORDER BY errors, c.created_at DESC
            LIMIT 1
            """,
            {"payload": payload, "tenant": tenant_id, "viewer": viewer_account_id},
        ).fetchone()
        if row is not None and row[1] <= watermark.MAX_BIT_ERRORS:
            return row[0], int(row[1])
    return None


def _owned(
    conn: Connection,
    policies: PolicyRegistry,
    tenant_id: UUID,
    viewer_account_id: UUID | None,
    content_id: UUID,
    identified_by: str,
    now: datetime,
) -> OwnedContent | None:
    row = conn.execute(
        """
        SELECT c.model, c.created_at
        FROM content c JOIN accounts a ON a.account_id = c.account_id
        WHERE c.content_id = %(content)s AND a.tenant_id = %(tenant)s
          AND (%(viewer)s::uuid IS NULL OR c.account_id = %(viewer)s::uuid)
        """,
        {"content": content_id, "tenant": tenant_id, "viewer": viewer_account_id},
    ).fetchone()
    if row is None:
        return None
    state = item_provenance(conn, policies, now=now, content_ids=[content_id])[content_id]
    return OwnedContent(
        content_id,
        row[0],
        row[1],
        identified_by,
        state.training_use_in_file,
        state.eligible_for_training_now,
        state.training_explanation,
    )


def _parse_uuid(text: str) -> UUID | None:
    try:
        return UUID(text)
    except ValueError:
        return None
