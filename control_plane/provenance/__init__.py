"""Provenance in every generated image (issue 20): a signed C2PA manifest and an invisible
watermark, embedded by StoreContent before the bytes are encrypted and stored, and read back by
VerifyProvenance."""

from control_plane.provenance.certificates import (
    SigningCredentials,
    SigningCredentialsError,
    ensure_development_credentials,
    load_signing_credentials,
)
from control_plane.provenance.manifest import ManifestReading, ManifestStatus, TrainingUse
from control_plane.provenance.marking import ItemToMark, Mark, ProvenanceMarker, record_marks
from control_plane.provenance.verify import OwnedContent, ProvenanceReport, WatermarkStatus, verify_provenance

__all__ = [
    "ItemToMark",
    "ManifestReading",
    "ManifestStatus",
    "Mark",
    "OwnedContent",
    "ProvenanceMarker",
    "ProvenanceReport",
    "SigningCredentials",
    "SigningCredentialsError",
    "TrainingUse",
    "WatermarkStatus",
    "ensure_development_credentials",
    "load_signing_credentials",
    "record_marks",
    "verify_provenance",
]
