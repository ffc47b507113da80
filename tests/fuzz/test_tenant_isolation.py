"""Adversarial tenant isolation: one tenant's keys against the other tenant's ids, for every RPC.

Descriptor-driven: for every RPC and every request field that names something a tenant owns
(`ID_KINDS`), the attacker's keys (admin and each narrower scope) send the victim's real ids,
alone and mixed with the attacker's own ids, and the same request with a guessed id instead.
Nothing may be readable (no victim id, hash, prompt or export item in any answer) or
changeable (the victim's rows hash the same), and the answer to a real victim id must equal
the answer to a guessed id (same code, same message once the id is masked), so ids cannot be
probed. DESIGN.md §8 allows NOT_FOUND or PERMISSION_DENIED; what the server answers per RPC
is collected in `OBSERVED` and printed in the terminal summary.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message as pb_message

from control_plane.adapters.blobstore import LocalBlobStore
from control_plane.adapters.keystore import PostgresKeyStore
from control_plane.clock import ManualClock
from control_plane.db.pool import Pool
from control_plane.policy import PolicyRegistry
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1 import training_pb2 as tpb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from protos.atelier.v1.training_pb2_grpc import TrainingDataStub
from tests.fuzz._oracle import CASES, OBSERVED, Fingerprints, Outcome, call, changed, check_answer, check_no_leak
from tests.fuzz._rpcs import Rpc, fuzzed_rpcs, unary
from tests.fuzz._world import TenantWorld, World, build_world
from tests.integration.control_plane._support import bearer, png_bytes

FD = pb_descriptor.FieldDescriptor

ID_KINDS: dict[str, str] = {
    "account_id": "accounts",
    "viewer_account_id": "accounts",
    "content_id": "content_ids",
    "reservation_id": "held_reservation_ids",
    "commit_reservation_id": "held_reservation_ids",
    "dsr_id": "dsr_ids",
    "key_id": "key_ids",
    "sha256": "sha256s",
}
"""Request field name -> the TenantWorld list of ids of that kind (a new RPC's id fields join here)."""

_STRING_DEFAULTS = {"source": "web", "name": "isolation key", "birth_date": "1990-05-17"}
_INT_DEFAULTS = {"amount": 1}

ISOLATION_RPCS = [r for r in fuzzed_rpcs() if any(f.name in ID_KINDS for f in r.method.input_type.fields)]


@pytest.fixture
def clean_state() -> None:
    """Overrides the per-test truncation: this module's tests share one world, which no attack changes."""


@pytest.fixture(scope="module")
def world(
    pool: Pool,
    stub: ControlPlaneStub,
    channel: grpc.Channel,
    blobs: LocalBlobStore,
    keys: PostgresKeyStore,
    policies: PolicyRegistry,
    clock: ManualClock,
    tmp_path_factory: pytest.TempPathFactory,
) -> World:
    """One world for the module (the tests assert that nothing they send changes it)."""
    export_dir = tmp_path_factory.mktemp("isolation-export")
    return build_world(pool, stub, TrainingDataStub(channel), blobs, keys, policies, clock, export_dir)


def _guess(field: str) -> str:
    if field == "sha256":
        return hashlib.sha256(secrets.token_bytes(16)).hexdigest()
    if field == "key_id":
        return f"ak_{secrets.token_hex(8)}"
    return str(uuid.uuid4())


def _template(target: Rpc) -> pb_message.Message:
    """A request that would succeed for the caller's own ids: every non-id field filled sensibly."""
    message = target.request_class()
    for field in target.method.input_type.fields:
        if field.name in ID_KINDS:
            continue
        if field.type == FD.TYPE_ENUM:
            if field.is_repeated:
                getattr(message, field.name).append(1)
            else:
                setattr(message, field.name, 1)
        elif field.type == FD.TYPE_STRING and field.name in _STRING_DEFAULTS:
            setattr(message, field.name, _STRING_DEFAULTS[field.name])
        elif field.type in (FD.TYPE_UINT64, FD.TYPE_UINT32) and field.name in _INT_DEFAULTS:
            setattr(message, field.name, _INT_DEFAULTS[field.name])
        elif field.name == "items":
            getattr(message, field.name).add(
                kind=pb.CONTENT_KIND_GENERATED, media_type="image/png", data=png_bytes(4242), prompt="an attack"
            )
    return message


def _attacks(target: Rpc, attacker: TenantWorld, victim: TenantWorld) -> Iterator[tuple[str, str, Any, Any]]:
    """(field, victim id, request with it, same request with a guessed id) for each id field and victim id.

    Each victim id is sent alone and beside the attacker's own ids in the other id fields.
    """
    id_fields = [f.name for f in target.method.input_type.fields if f.name in ID_KINDS]
    for name in id_fields:
        for victim_id in getattr(victim, ID_KINDS[name]):
            for beside_own in (False, True):
                pair = []
                for value in (victim_id, _guess(name)):
                    request = _template(target)
                    if beside_own:
                        for other in id_fields:
                            if other != name:
                                setattr(request, other, getattr(attacker, ID_KINDS[other])[0])
                    setattr(request, name, value)
                    pair.append(request)
                yield name, victim_id, pair[0], pair[1]


def _attackers(world: World, name: str) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    tenant = world.tenants[name]
    keys = [("admin", tenant.admin.metadata)]
    keys += [(scope, bearer(secret)) for scope, secret in tenant.scoped.items()]
    return keys


def _masked(outcome: Outcome, value: str) -> tuple[grpc.StatusCode, str]:
    return outcome.code, outcome.details.replace(value, "<id>")


@pytest.mark.parametrize("target", ISOLATION_RPCS, ids=[r.name for r in ISOLATION_RPCS])
def test_another_tenants_ids_are_neither_readable_nor_changeable_nor_probeable(
    target: Rpc, world: World, channel: grpc.Channel, fingerprints: Fingerprints
) -> None:
    send = unary(channel, target)
    for attacker_name in world.tenants:
        attacker, victim = world.tenants[attacker_name], world.other(attacker_name)
        secrets_of_victim = victim.secrets_of_data()
        for key_label, metadata in _attackers(world, attacker_name):
            for field, victim_id, attack, guess in _attacks(target, attacker, victim):
                CASES[(target.method.containing_service.name, "isolation")] += 1
                label = f"{target.name} {field}=<{victim.name}'s id> with {attacker_name}'s {key_label} key"
                before, victim_before = fingerprints.everything(), fingerprints.tenant(victim.tenant_id)
                attacked = call(send, attack, metadata)
                check_answer(label, target.entry, attacked)
                check_no_leak(label, attacked, secrets_of_victim, attack.SerializeToString())
                touched = changed(victim_before, fingerprints.tenant(victim.tenant_id)) - target.entry.global_tables
                assert not touched, f"{label} changed the victim's {sorted(touched)}"
                if attacked.code != grpc.StatusCode.OK:
                    stray = changed(before, fingerprints.everything())
                    assert not stray, f"{label} was refused ({attacked.code.name}) but changed {sorted(stray)}"
                guessed = call(send, guess, metadata)
                assert _masked(attacked, victim_id) == _masked(guessed, getattr(guess, field)), (
                    f"{label}: a real id and a guessed one are told apart:"
                    f" {attacked.code.name} {attacked.details!r} vs {guessed.code.name} {guessed.details!r}"
                )
                if attacked.code == grpc.StatusCode.OK:
                    assert attacked.response == guessed.response, f"{label}: answers differ from a guessed id's"
                OBSERVED[target.name].add(attacked.code.name)


def test_the_gallery_shows_only_the_own_tenants_public_items_and_never_prompts(
    world: World, stub: ControlPlaneStub
) -> None:
    for name, tenant in world.tenants.items():
        other = world.other(name)
        gallery = stub.ListPublicGallery(pb.ListPublicGalleryRequest(page_size=100), metadata=tenant.admin.metadata)
        shown = {item.content_id for item in gallery.contents}
        assert shown and shown <= set(tenant.public_content_ids)
        assert not shown & set(other.content_ids)
        assert all(item.prompt == "" for item in gallery.contents)
        # Another account of the owner's tenant sees the public item, without its prompt and
        # with its bytes; the other tenant's accounts see nothing.
        public_id = shown.pop()
        viewer = tenant.accounts[1]
        seen = stub.GetContent(
            pb.GetContentRequest(content_id=public_id, viewer_account_id=viewer, include_data=True),
            metadata=tenant.admin.metadata,
        )
        assert (seen.content.prompt, len(seen.data) > 0) == ("", True)
        for viewer in other.accounts:
            with pytest.raises(grpc.RpcError) as caught:
                stub.GetContent(
                    pb.GetContentRequest(content_id=public_id, viewer_account_id=viewer, include_data=True),
                    metadata=other.admin.metadata,
                )
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_private_content_of_another_account_is_not_found_for_a_viewer_of_the_same_tenant(
    world: World, stub: ControlPlaneStub
) -> None:
    tenant = world.tenants["a"]
    private = [c for c in tenant.content_ids[:-1] if c not in tenant.public_content_ids]
    assert private
    for content_id in private:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetContent(
                pb.GetContentRequest(content_id=content_id, viewer_account_id=tenant.accounts[1], include_data=True),
                metadata=tenant.admin.metadata,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    listed = stub.ListContent(
        pb.ListContentRequest(account_id=tenant.rich, viewer_account_id=tenant.accounts[1]),
        metadata=tenant.admin.metadata,
    )
    assert {c.content_id for c in listed.contents} <= set(tenant.public_content_ids)
    assert all(c.prompt == "" for c in listed.contents)


def test_export_archives_audit_entries_and_removal_manifests_stay_within_their_tenant(
    world: World, stub: ControlPlaneStub, channel: grpc.Channel
) -> None:
    training = TrainingDataStub(channel)
    for name, tenant in world.tenants.items():
        other = world.other(name)
        archive = stub.GetExportArchive(
            pb.GetExportArchiveRequest(dsr_id=tenant.export_dsr_id), metadata=tenant.admin.metadata
        ).archive
        assert archive.startswith(b"PK")
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetExportArchive(
                pb.GetExportArchiveRequest(dsr_id=tenant.export_dsr_id), metadata=other.admin.metadata
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        entries = stub.ListAuditEntries(
            pb.ListAuditEntriesRequest(account_id=tenant.rich, page_size=1000), metadata=tenant.admin.metadata
        ).entries
        assert entries
        mentioned = b"".join(entry.SerializeToString() for entry in entries)
        assert not [s for s in other.secrets_of_data() if s in mentioned]

        removals = training.ListRemovals(
            tpb.ListRemovalsRequest(export_id=world.export_id), metadata=tenant.admin.metadata
        ).removals
        listed = {r.item_id for r in removals}
        # The world made each tenant's exported public item private after the export.
        assert listed == set(tenant.exported_item_ids) and listed
        assert not listed & set(other.exported_item_ids)

        dsrs = stub.ListDsrRequests(pb.ListDsrRequestsRequest(page_size=1000), metadata=tenant.admin.metadata)
        assert {r.dsr_id for r in dsrs.requests} == set(tenant.dsr_ids)


def test_changing_anothers_visibility_or_consents_fails_and_leaves_them(
    world: World, stub: ControlPlaneStub, fingerprints: Fingerprints
) -> None:
    attacker, victim = world.tenants["a"], world.tenants["b"]
    before = fingerprints.tenant(victim.tenant_id)
    attempts: list[tuple[Any, Any]] = [
        (
            stub.SetVisibility,
            pb.SetVisibilityRequest(
                account_id=victim.rich, visibility=common_pb2.VISIBILITY_PUBLIC, apply_to_default=True
            ),
        ),
        (
            stub.RecordConsent,
            pb.RecordConsentRequest(
                account_id=victim.rich,
                purpose=pb.CONSENT_PURPOSE_TRAINING,
                granted=False,
                method=pb.CONSENT_METHOD_API,
                source="attack",
            ),
        ),
        (stub.RequestErasure, pb.RequestErasureRequest(account_id=victim.rich)),
        (stub.GrantCredits, pb.GrantCreditsRequest(account_id=victim.rich, amount=5)),
    ]
    for method, request in attempts:
        with pytest.raises(grpc.RpcError) as caught:
            method(request, metadata=attacker.admin.metadata)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert fingerprints.tenant(victim.tenant_id) == before
    consents = stub.GetConsents(pb.GetConsentsRequest(account_id=victim.rich), metadata=victim.admin.metadata)
    training = next(c for c in consents.consents if c.purpose == pb.CONSENT_PURPOSE_TRAINING)
    assert (training.granted, training.explicit) == (True, True)
