"""Two tenants with real data of every kind, built through the real API: the fuzzers' world.

Tenant "a" and tenant "b" each get an admin key, one key per narrower scope, a spare key, and
accounts holding everything an RPC can name: credits and a ledger, held and committed
reservations, public and private content with prompts, consents, opt-outs, a completed
export (its archive), an erased item, moderation flags and audit entries. A training export
covers both tenants' public items. Every prompt carries a marker, so a response that leaks
another tenant's data can be recognised byte for byte.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from uuid import UUID, uuid4

import grpc
import pyarrow.parquet as pq
from google.protobuf.message import Message

from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.api_keys import ensure_operator_key
from control_plane.clock import ManualClock
from control_plane.db.pool import Pool
from control_plane.entrypoints.page_tokens import encode_removals_cursor
from control_plane.policy import PolicyRegistry
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1 import training_pb2 as tpb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from protos.atelier.v1.training_pb2_grpc import TrainingDataStub
from tests.fuzz._strategies import Derived
from tests.integration.control_plane._support import Caller, png_bytes
from tests.integration.control_plane._training import export_training

TENANTS = ("a", "b")
BLOCKED_PROMPT = "a gore scene"
"""Matches the default moderation policy: ReserveCredits refuses it and records a flag."""


@dataclass
class TenantWorld:
    """What one tenant owns, by id, and what must never reach another tenant."""

    name: str
    tenant_id: str
    admin: Caller
    scoped: dict[str, str]
    """Scope name ("read", "generate", "privacy") -> secret of a key with only that scope."""
    key_ids: list[str]
    accounts: list[str]
    content_ids: list[str]
    public_content_ids: list[str]
    reservation_ids: list[str]
    held_reservation_ids: list[str]
    dsr_ids: list[str]
    export_dsr_id: str
    sha256s: list[str]
    prompts: list[str]
    page_tokens: list[str] = field(default_factory=list)
    exported_item_ids: list[str] = field(default_factory=list)
    """Pseudonymous ids of this tenant's items in the world's training export."""

    @property
    def rich(self) -> str:
        """The account with credits, content, reservations, consents and requests."""
        return self.accounts[0]

    def secrets_of_data(self) -> list[bytes]:
        """Byte strings that may appear only in answers to this tenant's callers."""
        values = [
            self.tenant_id,
            *self.key_ids,
            *self.accounts,
            *self.content_ids,
            *self.reservation_ids,
            *self.dsr_ids,
            *self.sha256s,
            *self.prompts,
            *self.exported_item_ids,
        ]
        return [value.encode() for value in values]


@dataclass
class World:
    """Both tenants plus what they share: a training export across all tenants."""

    tenants: dict[str, TenantWorld]
    export_id: str
    removals_tokens: list[str]
    export_item_ids: dict[str, str]
    """SHA-256 of each exported item -> its pseudonymous id in the export (and removal manifests)."""

    def other(self, name: str) -> TenantWorld:
        """The tenant that is not `name`."""
        return next(t for n, t in self.tenants.items() if n != name)


def _marker(tenant: str, index: int) -> str:
    return f"SECRET-PROMPT-OF-{tenant.upper()}-{index}"


def _item(seed: int, prompt: str, visibility: int) -> pb.NewContent:
    return pb.NewContent(
        kind=pb.CONTENT_KIND_GENERATED,
        media_type="image/png",
        data=png_bytes(seed),
        prompt=prompt,
        parameters=common_pb2.GenerationParameters(model="tiny-sd", width=64, height=64, steps=2, seed=seed),
        visibility=visibility,  # type: ignore[arg-type]
    )


def _build_tenant(
    pool: Pool, stub: ControlPlaneStub, training: TrainingDataStub, clock: ManualClock, name: str, seed_base: int
) -> TenantWorld:
    # A unique name: worlds may be built beside an earlier test's rows.
    principal, secret = ensure_operator_key(pool, f"fuzz tenant {name} {uuid4().hex[:8]}", now=clock.now())
    if secret is None:
        raise RuntimeError("a new tenant's admin key must be new")
    admin = Caller(principal, secret)
    md = admin.metadata
    scoped: dict[str, str] = {}
    key_ids = [principal.key_id]
    for scope_name, scope in (("read", pb.SCOPE_READ), ("generate", pb.SCOPE_GENERATE), ("privacy", pb.SCOPE_PRIVACY)):
        # Service keys acting for the whole tenant (tests/integration/control_plane/
        # test_acting_accounts.py covers keys that must name an acting account).
        created = stub.CreateApiKey(
            pb.CreateApiKeyRequest(name=f"{name} {scope_name}", scopes=[scope, pb.SCOPE_ACT_FOR_ANY]), metadata=md
        )
        scoped[scope_name] = created.secret
        key_ids.append(created.key.key_id)
    spare = stub.CreateApiKey(pb.CreateApiKeyRequest(name=f"{name} spare", scopes=[pb.SCOPE_READ]), metadata=md)
    key_ids.append(spare.key.key_id)

    accounts = [
        stub.CreateAccount(
            pb.CreateAccountRequest(birth_date="1990-05-17", initial_credits=credits), metadata=md
        ).account.account_id
        for credits in (1000, 5, 0)
    ]
    rich = accounts[0]
    for purpose in (pb.CONSENT_PURPOSE_TRAINING, pb.CONSENT_PURPOSE_ANALYTICS):
        stub.RecordConsent(
            pb.RecordConsentRequest(
                account_id=rich, purpose=purpose, granted=True, method=pb.CONSENT_METHOD_SETTINGS, source="web"
            ),
            metadata=md,
        )

    prompts = [_marker(name, i) for i in range(4)]
    visibilities = [common_pb2.VISIBILITY_PUBLIC, common_pb2.VISIBILITY_PRIVATE] * 2
    content: list[pb.Content] = []
    reservation_ids: list[str] = []
    for index, (prompt, visibility) in enumerate(zip(prompts, visibilities, strict=True)):
        reservation = stub.ReserveCredits(
            pb.ReserveCreditsRequest(account_id=rich, amount=2, purpose="fuzz world"), metadata=md
        ).reservation
        reservation_ids.append(reservation.reservation_id)
        stored = stub.StoreContent(
            pb.StoreContentRequest(
                account_id=rich,
                items=[_item(seed_base + index, prompt, visibility)],
                commit_reservation_id=reservation.reservation_id,
            ),
            metadata=md,
        )
        content.extend(stored.contents)
    held = [
        stub.ReserveCredits(
            pb.ReserveCreditsRequest(account_id=account, amount=1, purpose="held"), metadata=md
        ).reservation.reservation_id
        for account in accounts[:2]
    ]
    # A blocked prompt leaves a moderation flag and an audit entry.
    try:
        stub.ReserveCredits(pb.ReserveCreditsRequest(account_id=rich, amount=1, prompt=BLOCKED_PROMPT), metadata=md)
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
            raise
    else:
        raise RuntimeError("the default moderation policy no longer blocks the world's blocked prompt")

    training.OptOut(tpb.OptOutRequest(account_id=rich, content_id=content[2].content_id, source="web"), metadata=md)
    export = stub.RequestExport(pb.RequestExportRequest(account_id=rich), metadata=md).request
    erased_item = content.pop()
    erasure = stub.RequestErasure(
        pb.RequestErasureRequest(account_id=rich, content_id=erased_item.content_id), metadata=md
    ).request

    page_tokens = [
        stub.ListLedger(pb.ListLedgerRequest(account_id=rich, page_size=1), metadata=md).next_page_token,
        stub.ListContent(pb.ListContentRequest(account_id=rich, page_size=1), metadata=md).next_page_token,
        stub.ListPublicGallery(pb.ListPublicGalleryRequest(page_size=1), metadata=md).next_page_token,
        stub.ListAuditEntries(pb.ListAuditEntriesRequest(account_id=rich, page_size=1), metadata=md).next_page_token,
    ]
    return TenantWorld(
        name=name,
        tenant_id=str(principal.tenant_id),
        admin=admin,
        scoped=scoped,
        key_ids=key_ids,
        accounts=accounts,
        content_ids=[c.content_id for c in content] + [erased_item.content_id],
        public_content_ids=[c.content_id for c in content if c.visibility == common_pb2.VISIBILITY_PUBLIC],
        reservation_ids=reservation_ids + held,
        held_reservation_ids=held,
        dsr_ids=[export.dsr_id, erasure.dsr_id],
        export_dsr_id=export.dsr_id,
        sha256s=[c.sha256 for c in content] + [erased_item.sha256],
        prompts=prompts,
        page_tokens=[token for token in page_tokens if token],
    )


def build_world(
    pool: Pool,
    stub: ControlPlaneStub,
    training: TrainingDataStub,
    blobs: LocalBlobStore,
    keys: PostgresKeyStore,
    policies: PolicyRegistry,
    clock: ManualClock,
    export_dir: Path,
) -> World:
    """Creates both tenants' data and a training export of everything eligible."""
    tenants = {
        name: _build_tenant(pool, stub, training, clock, name, seed_base=100 * (i + 1))
        for i, name in enumerate(TENANTS)
    }
    export = export_training(pool, blobs, keys, policies, now=clock.now(), output_dir=export_dir, include_images=False)
    # One removal per tenant, so removal manifests have something to (not) leak.
    for tenant in tenants.values():
        stub.SetVisibility(
            pb.SetVisibilityRequest(content_id=tenant.public_content_ids[0], visibility=common_pb2.VISIBILITY_PRIVATE),
            metadata=tenant.admin.metadata,
        )
    exported = pq.read_table(export.directory).to_pylist() if export.item_count else []
    for tenant in tenants.values():
        tenant.exported_item_ids = [row["item_id"] for row in exported if row["sha256"] in tenant.sha256s]
    return World(
        tenants=tenants,
        export_id=str(export.export_id),
        removals_tokens=[encode_removals_cursor(1)],
        export_item_ids={row["sha256"]: row["item_id"] for row in exported},
    )


_ENTRY_EDGES: tuple[object, ...] = (1, 2**31, 2**63 - 1, 2**63, 2**70, -1, 0, 1.5, "7", True, None)
_INSTANT_EDGES = (
    "2026-03-01T12:00:00+00:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "2026-03-01T12:00:00",
    "not a time",
)
_LISTING_OF_REQUEST = {
    "ListLedgerRequest": "ledger",
    "ListAuditEntriesRequest": "audit",
    "ListContentRequest": "content",
    "ListPublicGalleryRequest": "gallery",
}


def _encode_token(payload: dict[str, object]) -> str:
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def forge_tokens(listing: str, owner: str, content_id: str) -> list[str]:
    """Tokens of `listing` for `owner` (account, or tenant for the gallery) a client could forge:
    the right shape, with values at and past the edges."""
    if listing in ("ledger", "audit"):
        return [_encode_token({"l": listing, "a": owner, "e": entry}) for entry in _ENTRY_EDGES]
    return [
        _encode_token({"l": listing, "a": owner, "t": instant, "c": cid})
        for instant in _INSTANT_EDGES
        for cid in (content_id, "nope", 7)
    ]


def forged_tokens(world: World) -> list[str]:
    """Forged tokens of every listing for both tenants, and forged removal cursors."""
    forged: list[str] = []
    for tenant in world.tenants.values():
        for listing in ("ledger", "audit", "content"):
            forged += forge_tokens(listing, tenant.rich, tenant.content_ids[0])
        forged += forge_tokens("gallery", tenant.tenant_id, tenant.content_ids[0])
    for after in (0, 1, 2**63 - 1, 2**63, 2**80, -5):
        forged.append(base64.urlsafe_b64encode(f"removals:{after}".encode()).decode().rstrip("="))
    forged.append(base64.urlsafe_b64encode("removals:١٢".encode()).decode().rstrip("="))
    forged.append(base64.urlsafe_b64encode(b"removals: 12 ").decode().rstrip("="))
    return forged


def _tokens_for(world: World, static: list[str]) -> Derived:
    """Page tokens: half forged for the listing and account of the request being built (so they
    get past the token's own checks and into the SQL), half `static` ones."""
    tenant_ids = [t.tenant_id for t in world.tenants.values()]
    some_content = world.tenants["a"].content_ids[0]

    def candidates(request: Message) -> list[str]:
        listing = _LISTING_OF_REQUEST.get(request.DESCRIPTOR.name)
        forged: list[str] = []
        if listing == "gallery":
            forged = [t for tenant_id in tenant_ids for t in forge_tokens(listing, tenant_id, some_content)]
        elif listing is not None and getattr(request, "account_id", ""):
            forged = forge_tokens(listing, request.account_id, some_content)  # type: ignore[attr-defined]
        return forged * max(1, len(static) // max(len(forged), 1)) + static

    return Derived(candidates)


def hints(world: World) -> dict[str, list[object]]:
    """Near-valid values by request field name, from both tenants' real data."""
    a, b = world.tenants["a"], world.tenants["b"]
    accounts = a.accounts + b.accounts
    content_ids = a.content_ids + b.content_ids
    reservations = a.reservation_ids + b.reservation_ids
    item = _item(999, "a quiet harbour", common_pb2.VISIBILITY_PUBLIC)
    tokens = a.page_tokens + b.page_tokens + world.removals_tokens + forged_tokens(world)
    return {
        "account_id": accounts,
        "viewer_account_id": accounts,
        "content_id": content_ids,
        "reservation_id": reservations,
        "commit_reservation_id": reservations,
        "dsr_id": a.dsr_ids + b.dsr_ids,
        "export_id": [world.export_id, str(UUID(int=1))],
        "key_id": a.key_ids[-1:] + b.key_ids,
        "sha256": a.sha256s + b.sha256s + [s.upper() for s in a.sha256s[:1]] + [hashlib.sha256(b"").hexdigest()],
        "page_token": [_tokens_for(world, tokens)],
        "birth_date": ["1990-05-17", "2020-01-01", "1900-02-29", "2000-02-29", "1990-13-01", "١٩٩٠-٠٥-١٧"],
        "media_type": ["image/png", "image/jpeg", "IMAGE/PNG"],
        "data": [png_bytes(7), png_bytes(8, size=64)],
        "items": [item],
        "prompt": [BLOCKED_PROMPT, "a red kite", "p" * 2000, "p" * 2001],
        "source": ["web", "api", "s" * 100, "s" * 101],
        "name": ["fuzzed key", "n" * 100, "n" * 101],
        "reason": ["fuzz", "r" * 200, "r" * 201],
        "purpose": ["fuzz", "r" * 200, "r" * 201],
        "policy_version": ["v1", "v" * 51],
    }
