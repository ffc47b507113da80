"""Data-subject requests: export archives, erasure of an item or an account, deadlines, audit."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable
from datetime import timedelta
from uuid import UUID

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from control_plane import dsr
from control_plane.audit import SYSTEM
from control_plane.db.pool import Pool
from control_plane.policy import PolicyProfile
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._privacy import generate, new_item
from tests.integration.control_plane._support import CLOCK_START, Caller, StoredBlobs, error_reason, png_bytes

pytestmark = pytest.mark.blob_stores


def _export(stub: ControlPlaneStub, caller: Caller, account: str) -> tuple[pb.DsrRequest, zipfile.ZipFile]:
    request = stub.RequestExport(pb.RequestExportRequest(account_id=account), metadata=caller.metadata).request
    archive = stub.GetExportArchive(pb.GetExportArchiveRequest(dsr_id=request.dsr_id), metadata=caller.metadata)
    assert archive.media_type == "application/zip"
    return request, zipfile.ZipFile(io.BytesIO(archive.archive))


class TestExport:
    def test_the_archive_holds_every_record_and_the_decrypted_images_but_not_flagged_ones(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str]
    ) -> None:
        account = make_account(credits=5)
        first, second = generate(stub, operator, account, new_item(1, prompt="a red fox"), new_item(2)).contents
        stub.StoreContent(
            pb.StoreContentRequest(account_id=account, items=[new_item(3, prompt="gore everywhere")]),
            metadata=operator.metadata,
        )
        stub.RecordConsent(
            pb.RecordConsentRequest(
                account_id=account,
                purpose=pb.CONSENT_PURPOSE_TRAINING,
                granted=True,
                method=pb.CONSENT_METHOD_SETTINGS,
                source="web",
            ),
            metadata=operator.metadata,
        )
        request, archive = _export(stub, operator, account)
        assert request.state == pb.DSR_STATE_COMPLETED and request.kind == pb.DSR_KIND_EXPORT
        assert request.due_at.ToDatetime() - request.received_at.ToDatetime() == timedelta(days=30)
        names = set(archive.namelist())
        assert {
            "account.json",
            "consents.json",
            "ledger.json",
            "content.json",
            "moderation_flags.json",
            "audit.json",
        } <= names
        assert {n for n in names if n.startswith("images/")} == {
            f"images/{first.content_id}.png",
            f"images/{second.content_id}.png",
        }
        assert archive.read(f"images/{first.content_id}.png") == png_bytes(1)
        account_json = json.loads(archive.read("account.json"))
        assert account_json["personal"]["birth_date"] == "1990-05-17"
        assert {c["prompt"] for c in json.loads(archive.read("content.json"))} == {
            "a red fox",
            "a lighthouse at dusk #2",
        }
        assert [c["purpose"] for c in json.loads(archive.read("consents.json"))] == ["training"]
        assert [e["delta"] for e in json.loads(archive.read("ledger.json"))] == [-1, 5]
        assert [f["category"] for f in json.loads(archive.read("moderation_flags.json"))] == ["violence"]
        assert "content.store" in {a["action"] for a in json.loads(archive.read("audit.json"))}

    def test_exports_need_the_privacy_scope_and_a_known_account(
        self, stub: ControlPlaneStub, make_key: Callable[..., str], operator: Caller
    ) -> None:
        secret = make_key(pb.SCOPE_READ)
        with pytest.raises(grpc.RpcError) as error:
            stub.RequestExport(
                pb.RequestExportRequest(account_id=str(UUID(int=1))), metadata=(("authorization", f"Bearer {secret}"),)
            )
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as error:
            stub.RequestExport(pb.RequestExportRequest(account_id=str(UUID(int=1))), metadata=operator.metadata)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND


class TestErasure:
    def test_erasing_one_item_makes_it_unreadable_unlisted_and_deletes_its_blob(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], stored_blobs: StoredBlobs
    ) -> None:
        account = make_account(credits=5)
        gone, kept = generate(
            stub, operator, account, new_item(1, visibility=common_pb2.VISIBILITY_PUBLIC), new_item(2)
        ).contents
        request = stub.RequestErasure(
            pb.RequestErasureRequest(account_id=account, content_id=gone.content_id), metadata=operator.metadata
        ).request
        assert request.state == pb.DSR_STATE_COMPLETED and request.content_id == gone.content_id
        with pytest.raises(grpc.RpcError) as error:
            stub.GetContent(pb.GetContentRequest(content_id=gone.content_id), metadata=operator.metadata)
        assert error.value.code() == grpc.StatusCode.NOT_FOUND
        listed = stub.ListContent(pb.ListContentRequest(account_id=account), metadata=operator.metadata)
        assert [c.content_id for c in listed.contents] == [kept.content_id]
        assert stub.ListPublicGallery(pb.ListPublicGalleryRequest(), metadata=operator.metadata).contents == []
        assert len(stored_blobs()) == 1

    def test_erasing_an_account_leaves_a_tombstone_and_the_ledger_and_audit_rows(
        self,
        stub: ControlPlaneStub,
        operator: Caller,
        make_account: Callable[..., str],
        pool: Pool,
        stored_blobs: StoredBlobs,
    ) -> None:
        account = make_account(credits=5)
        generate(stub, operator, account, new_item(1))
        _export(stub, operator, account)
        request = stub.RequestErasure(pb.RequestErasureRequest(account_id=account), metadata=operator.metadata).request
        assert request.state == pb.DSR_STATE_COMPLETED
        shown = stub.GetAccount(pb.GetAccountRequest(account_id=account), metadata=operator.metadata).account
        assert shown.status == pb.ACCOUNT_STATUS_ERASED
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM account_personal").fetchone()[0] == 0
            assert conn.execute("SELECT count(*) FROM content").fetchone()[0] == 0
            assert (
                conn.execute("SELECT count(*) FROM credit_ledger WHERE account_id = %s", (account,)).fetchone()[0] == 2
            )
            actions = {r[0] for r in conn.execute("SELECT action FROM audit_log").fetchall()}
        assert {"account.create", "content.store", "account.erase", "dsr.complete"} <= actions
        assert stored_blobs() == {}  # images and the export archive
        with pytest.raises(grpc.RpcError) as error:
            stub.ReserveCredits(pb.ReserveCreditsRequest(account_id=account, amount=1), metadata=operator.metadata)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.RpcError) as error:
            stub.RequestErasure(pb.RequestErasureRequest(account_id=account), metadata=operator.metadata)
        assert error_reason(error.value) == "ACCOUNT_ERASED"
        # The audit trail about the erased account stays readable (pseudonymous).
        audit = stub.ListAuditEntries(pb.ListAuditEntriesRequest(account_id=account), metadata=operator.metadata)
        assert audit.entries[0].action == "dsr.complete"


class TestDeadlines:
    def test_open_requests_past_their_due_date_are_overdue_as_of_a_time(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        account = make_account()
        with pool.connection() as conn:
            pending = dsr.record_request(
                conn,
                tenant_id=operator.principal.tenant_id,
                account_id=UUID(account),
                kind=dsr.DsrKind.EXPORT,
                profile=PolicyProfile(dsr_due_days=30),
                actor=SYSTEM,
                now=CLOCK_START,
            )
        stub.RequestExport(pb.RequestExportRequest(account_id=account), metadata=operator.metadata)

        def overdue(as_of: Timestamp | None) -> list[str]:
            request = pb.ListDsrRequestsRequest(overdue_only=True)
            if as_of is not None:
                request.as_of.CopyFrom(as_of)
            return [r.dsr_id for r in stub.ListDsrRequests(request, metadata=operator.metadata).requests]

        later = Timestamp()
        later.FromDatetime(CLOCK_START + timedelta(days=31))
        assert overdue(None) == []
        assert overdue(later) == [str(pending.dsr_id)]
        everything = stub.ListDsrRequests(pb.ListDsrRequestsRequest(account_id=account), metadata=operator.metadata)
        assert len(everything.requests) == 2


class TestAuditTrail:
    def test_entries_about_an_account_page_newest_first_and_hold_no_prompts(
        self, stub: ControlPlaneStub, operator: Caller, make_account: Callable[..., str], pool: Pool
    ) -> None:
        account = make_account(credits=5)
        generate(stub, operator, account, new_item(1, prompt="a very private prompt"))
        seen: list[pb.AuditEntry] = []
        token = ""
        while True:
            page = stub.ListAuditEntries(
                pb.ListAuditEntriesRequest(account_id=account, page_size=2, page_token=token),
                metadata=operator.metadata,
            )
            seen.extend(page.entries)
            if not page.next_page_token:
                break
            token = page.next_page_token
        ids = [e.id for e in seen]
        assert ids == sorted(ids, reverse=True) and len(set(ids)) == len(ids)
        assert {"account.create", "credits.grant", "credits.reserve", "credits.commit", "content.store"} <= {
            e.action for e in seen
        }
        assert {e.actor_key_id for e in seen} == {operator.principal.key_id}
        with pool.connection() as conn:
            assert (
                "private prompt"
                not in conn.execute("SELECT string_agg(details::text, ' ') FROM audit_log").fetchone()[0]
            )
