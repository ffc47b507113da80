"""C2PA manifests: signing what atelier made, reading what a file says (`c2pa-python`).

A manifest states: created by atelier; the action (`c2pa.created`, or `c2pa.opened` of the upload
as parent ingredient then `c2pa.edited`), its time and IPTC digital source type
(`trainedAlgorithmicMedia`; `compositeWithTrainedAlgorithmicMedia` for an edit of an upload);
the model name and version; the content id; and CAWG's training-and-data-mining assertion. No
prompt and no account identifier: a file travels, and these would identify its maker.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any
from uuid import UUID, uuid4

from control_plane.provenance.certificates import SigningCredentials

if TYPE_CHECKING:
    import c2pa

GENERATOR = "atelier"
CONTENT_ASSERTION = "org.atelier.content"
TRAINING_ASSERTION = "cawg.training-mining"
_IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
TRAINED_ALGORITHMIC_MEDIA = _IPTC + "trainedAlgorithmicMedia"
COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA = _IPTC + "compositeWithTrainedAlgorithmicMedia"
_TRAINING_ENTRIES = ("cawg.ai_training", "cawg.ai_generative_training", "cawg.data_mining")
"""The uses the training-and-data-mining assertion rules on (inference is not training)."""


class TrainingUse(StrEnum):
    """The training-and-data-mining assertion's `use` value."""

    ALLOWED = "allowed"
    NOT_ALLOWED = "notAllowed"


class ManifestStatus(StrEnum):
    """What a file's manifest proves."""

    ABSENT = "absent"
    """No C2PA manifest (stripped, or never signed)."""
    TRUSTED = "trusted"
    """Intact, and signed by a certificate chaining to this deployment's trust anchors."""
    UNTRUSTED = "untrusted"
    """Intact, but signed by a certificate this deployment does not trust (another signer)."""
    INVALID = "invalid"
    """The signature or a hash does not match: the file or manifest was altered after signing."""


@dataclass(frozen=True)
class ManifestFacts:
    """What a manifest of ours states."""

    content_id: UUID
    model: str
    model_version: str
    created_at: datetime
    training_use: TrainingUse
    ingredient_png: bytes | None = None
    """An edit's upload (the parent ingredient); None for a text-to-image generation."""


@dataclass(frozen=True)
class ManifestReading:
    """What `read_manifest` found."""

    status: ManifestStatus
    explanation: str
    """Why, for people: the validator's failure explanations, or what proves trust."""
    failure_codes: tuple[str, ...] = ()
    """C2PA validation status codes that failed, e.g. `signingCredential.untrusted`."""
    label: str = ""
    claim_generator: str = ""
    signer: str = ""
    """The signing certificate's issuer organization."""
    actions: tuple[str, ...] = ()
    digital_source_type: str = ""
    content_id: str = ""
    """The content id the manifest states (as signed; an untrusted signer may state anything)."""
    model: str = ""
    model_version: str = ""
    created_at: str = ""
    """The action's time as signed (ISO 8601)."""
    training_use: str = ""
    ingredient_count: int = 0


def sign_png(png: bytes, facts: ManifestFacts, credentials: SigningCredentials) -> tuple[bytes, str]:
    """`png` with an embedded, signed manifest stating `facts`; and the manifest's label.

    Raises:
        c2pa.C2paError: The credentials or the image were rejected by the C2PA library.
    """
    import c2pa

    edit = facts.ingredient_png is not None
    action: dict[str, Any] = {
        "action": "c2pa.edited" if edit else "c2pa.created",
        "when": facts.created_at.isoformat(),
        "softwareAgent": {"name": GENERATOR},
        "digitalSourceType": COMPOSITE_WITH_TRAINED_ALGORITHMIC_MEDIA if edit else TRAINED_ALGORITHMIC_MEDIA,
        "parameters": {"model": facts.model, "model_version": facts.model_version},
    }
    actions = [{"action": "c2pa.opened", "parameters": {"ingredientIds": ["upload"]}}, action] if edit else [action]
    # Chosen here rather than read back from the signed file: reading it back validates the whole
    # manifest again, which doubled the cost of signing.
    label = f"urn:c2pa:{uuid4()}"
    manifest = {
        "claim_generator_info": [{"name": GENERATOR}],
        "label": label,
        "title": f"{facts.content_id}.png",
        "format": "image/png",
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": actions}},
            {
                "label": TRAINING_ASSERTION,
                "data": {"entries": {entry: {"use": facts.training_use.value} for entry in _TRAINING_ENTRIES}},
            },
            {
                "label": CONTENT_ASSERTION,
                "data": {
                    "content_id": str(facts.content_id),
                    "model": facts.model,
                    "model_version": facts.model_version,
                },
            },
        ],
    }
    context, signer = _signing_tools(credentials)
    with c2pa.Builder(manifest, context=context) as builder:
        if facts.ingredient_png is not None:
            builder.add_ingredient(
                {"title": "upload.png", "relationship": "parentOf", "label": "upload"},
                "image/png",
                io.BytesIO(facts.ingredient_png),
            )
        out = io.BytesIO()
        builder.sign(signer, "image/png", io.BytesIO(png), out)
    return out.getvalue(), label


_per_thread = threading.local()


def _signing_tools(credentials: SigningCredentials) -> tuple[c2pa.Context, c2pa.Signer]:
    """The builder context and signer for `credentials`, made once per thread (parsing the chain and key
    on every image cost more than the signature; the library's objects are not shared across threads)."""
    import c2pa

    cached: tuple[SigningCredentials, c2pa.Context, c2pa.Signer] | None = getattr(_per_thread, "tools", None)
    if cached is None or cached[0] != credentials:
        # No thumbnail: it would quadruple a noisy PNG's size and repeat the pixels the file already has.
        context = c2pa.Context(settings=c2pa.Settings.from_dict({"builder": {"thumbnail": {"enabled": False}}}))
        signer = c2pa.Signer.from_info(
            c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, credentials.chain_pem, credentials.key_pem, None)
        )
        cached = (credentials, context, signer)
        _per_thread.tools = cached
    return cached[1], cached[2]


def read_manifest(data: bytes, media_type: str, trust_anchors_pem: bytes) -> ManifestReading:
    """Reads and validates the manifest embedded in `data` against `trust_anchors_pem`.

    Never raises for what a file holds: a damaged manifest is INVALID with the reason.
    """
    import c2pa

    # With no anchors (no signing credentials configured) nothing can be trusted: the signature and
    # hashes are still checked, and an intact manifest reads as untrusted.
    settings: dict[str, Any] = (
        {"trust": {"trust_anchors": trust_anchors_pem.decode()}, "verify": {"verify_trust": True}}
        if trust_anchors_pem
        else {"verify": {"verify_trust": False}}
    )
    context = c2pa.Context(settings=c2pa.Settings.from_dict(settings))
    try:
        reader = c2pa.Reader.try_create(media_type, io.BytesIO(data), context=context)
    except c2pa.C2paError as error:
        return ManifestReading(ManifestStatus.INVALID, f"the manifest cannot be read: {error}")
    if reader is None:
        return ManifestReading(ManifestStatus.ABSENT, "the file carries no C2PA manifest")
    with reader:
        state = reader.get_validation_state() or ""
        results = reader.get_validation_results() or {}
        active = reader.get_active_manifest() or {}
    failures = [item for item in (results.get("activeManifest") or {}).get("failure", [])]
    codes = tuple(str(item.get("code", "")) for item in failures)
    if state == "Trusted" and trust_anchors_pem:
        status, explanation = ManifestStatus.TRUSTED, "signed by a certificate this deployment trusts"
    elif not trust_anchors_pem and not failures:
        status = ManifestStatus.UNTRUSTED
        explanation = "intact, but this deployment has no signing certificate configured and trusts no signer"
    elif failures and all(code.startswith("signingCredential.untrusted") for code in codes):
        status = ManifestStatus.UNTRUSTED
        explanation = "intact, but signed by a certificate this deployment does not trust"
    else:
        status = ManifestStatus.INVALID
        explanation = "; ".join(str(item.get("explanation") or item.get("code")) for item in failures) or state
    return _with_fields(ManifestReading(status, explanation, codes), active)


def _with_fields(reading: ManifestReading, manifest: dict[str, Any]) -> ManifestReading:
    assertions = {item.get("label"): item.get("data") or {} for item in manifest.get("assertions", [])}
    actions = (assertions.get("c2pa.actions.v2") or assertions.get("c2pa.actions") or {}).get("actions", [])
    main = next(
        (a for a in actions if a.get("action") in ("c2pa.created", "c2pa.edited")), actions[-1] if actions else {}
    )
    content = assertions.get(CONTENT_ASSERTION) or {}
    training = (assertions.get(TRAINING_ASSERTION) or {}).get("entries") or {}
    generators = manifest.get("claim_generator_info") or [{}]
    return ManifestReading(
        status=reading.status,
        explanation=reading.explanation,
        failure_codes=reading.failure_codes,
        label=str(manifest.get("label", "")),
        claim_generator=str(generators[0].get("name", "")),
        signer=str((manifest.get("signature_info") or {}).get("issuer", "")),
        actions=tuple(str(a.get("action", "")) for a in actions),
        digital_source_type=str(main.get("digitalSourceType", "")),
        content_id=str(content.get("content_id", "")),
        model=str(content.get("model", "")),
        model_version=str(content.get("model_version", "")),
        created_at=str(main.get("when", "")),
        training_use=str((training.get("cawg.ai_training") or {}).get("use", "")),
        ingredient_count=len(manifest.get("ingredients") or []),
    )
