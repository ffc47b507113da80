"""Provenance through the real control plane: StoreContent marks generated images (watermark, signed
C2PA manifest) before storing them; VerifyProvenance reads the marks back and says whose they are."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator

import grpc
import numpy as np
import PIL.Image
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from control_plane.api_keys import ensure_operator_key
from control_plane.bootstrap import ControlPlaneDeps
from control_plane.clock import ManualClock
from control_plane.config import ControlPlaneConfig
from control_plane.db.pool import Pool
from control_plane.entrypoints.server import add_listen_port, build_server
from control_plane.policy import PolicyRegistry
from control_plane.provenance import SigningCredentials, ensure_development_credentials
from control_plane.provenance.manifest import ManifestStatus, read_manifest
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1 import training_pb2 as tpb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._privacy import use_profile
from tests.integration.control_plane._support import CLOCK_START, Caller, SwitchedBlobStore, bearer
from tests.integration.control_plane._training import training_stub

OPT_OUT_PROFILE = "opt-out-guardian-consent"
"""Seed 001: training unless the user opts out, private content included."""


@pytest.fixture(scope="module")
def signing(tmp_path_factory: pytest.TempPathFactory) -> SigningCredentials:
    return ensure_development_credentials(tmp_path_factory.mktemp("c2pa"))


@pytest.fixture(scope="module")
def marking_channel(  # type: ignore[no-untyped-def]
    config: ControlPlaneConfig,
    pool: Pool,
    blobs: SwitchedBlobStore,
    clock: ManualClock,
    keys,
    policies: PolicyRegistry,
    signing: SigningCredentials,
) -> Iterator[grpc.Channel]:
    """A server as `bootstrap` wires it in production: with signing credentials (the session's has none)."""
    deps = ControlPlaneDeps(pool=pool, blobs=blobs, clock=clock, keys=keys, policies=policies, signing=signing)
    server = build_server(config, deps)
    port = add_listen_port(server, "127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    server.stop(grace=None)


@pytest.fixture
def marking(marking_channel: grpc.Channel) -> ControlPlaneStub:
    return ControlPlaneStub(marking_channel)


def _png(size: int, seed: int = 0) -> bytes:
    coarse = np.random.default_rng(seed).random((size // 8, size // 8, 3))
    image = PIL.Image.fromarray((coarse * 255).astype("uint8")).resize((size, size), PIL.Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _generated(data: bytes, **fields: object) -> pb.NewContent:
    return pb.NewContent(
        kind=pb.CONTENT_KIND_GENERATED,
        media_type="image/png",
        data=data,
        prompt="a lighthouse at dusk",
        parameters=common_pb2.GenerationParameters(model="tiny-sd", width=256, height=256, steps=2),
        **fields,  # type: ignore[arg-type]
    )


def _store(stub: ControlPlaneStub, caller: Caller, account: str, *items: pb.NewContent) -> pb.StoreContentResponse:
    return stub.StoreContent(pb.StoreContentRequest(account_id=account, items=items), metadata=caller.metadata)


def _verify(stub: ControlPlaneStub, metadata: tuple[tuple[str, str], ...], data: bytes) -> pb.VerifyProvenanceResponse:
    return stub.VerifyProvenance(pb.VerifyProvenanceRequest(data=data), metadata=metadata)


def _stripped_jpeg(png: bytes, quality: int) -> bytes:
    # Pillow writes no EXIF, XMP or C2PA segment unless asked: the re-encoded file has pixels only.
    out = io.BytesIO()
    PIL.Image.open(io.BytesIO(png)).convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _provenance_row(pool: Pool, content_id: str) -> tuple[str, int | None, str | None, str]:
    with pool.connection() as conn:
        row = conn.execute(
            "SELECT training_use, watermark_payload, watermark_skipped, model_version FROM content_provenance"
            " WHERE content_id = %s",
            (content_id,),
        ).fetchone()
    assert row is not None
    return row


class TestStoringMarksGeneratedImages:
    def test_the_stored_file_is_watermarked_and_signed_and_is_what_the_response_returns(  # type: ignore[no-untyped-def]
        self, marking, operator, make_account, signing, pool
    ) -> None:
        account = make_account()
        sent = _png(256)
        response = _store(marking, operator, account, _generated(sent, model_version="2026-12"))

        [stored] = response.stored_data
        [content] = response.contents
        assert stored != sent and stored.startswith(b"\x89PNG")
        read_back = marking.GetContent(
            pb.GetContentRequest(content_id=content.content_id, include_data=True), metadata=operator.metadata
        )
        assert read_back.data == stored
        manifest = read_manifest(stored, "image/png", signing.trust_anchors_pem)
        assert manifest.status is ManifestStatus.TRUSTED, manifest.explanation
        assert (manifest.content_id, manifest.model, manifest.model_version) == (
            content.content_id,
            "tiny-sd",
            "2026-12",
        )
        assert manifest.actions == ("c2pa.created",)
        assert b"lighthouse" not in stored and account.encode() not in stored
        training_use, payload, skipped, version = _provenance_row(pool, content.content_id)
        # The default profile is opt-in and the account gave no training consent.
        assert (training_use, skipped, version) == ("notAllowed", None, "2026-12") and payload is not None

    def test_an_opted_out_accounts_next_image_says_not_allowed(  # type: ignore[no-untyped-def]
        self, marking, channel, operator, make_account, signing, pool, policies, clock
    ) -> None:
        use_profile(pool, policies, operator, OPT_OUT_PROFILE, clock.now())
        account = make_account()
        before = _store(marking, operator, account, _generated(_png(256, 1))).stored_data[0]
        training_stub(channel).OptOut(tpb.OptOutRequest(account_id=account, source="web"), metadata=operator.metadata)
        after = _store(marking, operator, account, _generated(_png(256, 2))).stored_data[0]

        assert read_manifest(before, "image/png", signing.trust_anchors_pem).training_use == "allowed"
        assert read_manifest(after, "image/png", signing.trust_anchors_pem).training_use == "notAllowed"
        # The earlier file is not re-signed; verify says the current state beside what the file says.
        answer = _verify(marking, operator.metadata, before)
        assert (answer.training_use_when_made, answer.eligible_for_training) == ("allowed", False)
        assert "opted out" in answer.training_explanation
        # A DSR export says both too, and its image is the signed file.
        request = marking.RequestExport(pb.RequestExportRequest(account_id=account), metadata=operator.metadata)
        archive = zipfile.ZipFile(
            io.BytesIO(
                marking.GetExportArchive(
                    pb.GetExportArchiveRequest(dsr_id=request.request.dsr_id), metadata=operator.metadata
                ).archive
            )
        )
        exported = {item["content_id"]: item for item in json.loads(archive.read("content.json"))}
        first = exported[answer.content_id]
        assert first["provenance"]["training_use_in_file"] == "allowed"
        assert first["provenance"]["eligible_for_training_now"] is False and first["provenance"]["watermarked"]
        assert archive.read(first["file"]) == before

    def test_an_edit_names_its_upload_as_ingredient_and_uploads_stay_unmarked(  # type: ignore[no-untyped-def]
        self, marking, operator, make_account, signing
    ) -> None:
        account = make_account()
        upload = pb.NewContent(kind=pb.CONTENT_KIND_UPLOAD, media_type="image/png", data=_png(256, 3))
        stored_upload = _store(marking, operator, account, upload)
        assert list(stored_upload.stored_data) == []
        edit = _generated(_png(256, 4))
        edit.parameters.source_content_id = stored_upload.contents[0].content_id
        edit.parameters.mode = common_pb2.GENERATION_MODE_IMAGE_TO_IMAGE

        stored = _store(marking, operator, account, edit).stored_data[0]

        manifest = read_manifest(stored, "image/png", signing.trust_anchors_pem)
        assert manifest.status is ManifestStatus.TRUSTED
        assert manifest.actions == ("c2pa.opened", "c2pa.edited") and manifest.ingredient_count == 1

    def test_small_images_and_models_without_watermark_are_signed_with_the_reason_recorded(  # type: ignore[no-untyped-def]
        self, marking, operator, make_account, signing, pool
    ) -> None:
        account = make_account()
        response = _store(
            marking, operator, account, _generated(_png(64)), _generated(_png(256, 5), skip_watermark=True)
        )
        small, disabled = response.contents
        assert _provenance_row(pool, small.content_id)[1:3] == (
            None,
            "smaller than 65536 pixels in area (DWT-DCT's minimum)",
        )
        assert _provenance_row(pool, disabled.content_id)[1:3] == (None, "disabled for the model")
        for data in response.stored_data:
            assert read_manifest(data, "image/png", signing.trust_anchors_pem).status is ManifestStatus.TRUSTED

    def test_a_png_whose_pixels_cannot_be_decoded_is_refused_and_nothing_is_stored(  # type: ignore[no-untyped-def]
        self, marking, operator, make_account, pool
    ) -> None:
        account = make_account()
        png = bytearray(_png(256, 8))
        start = png.index(b"IDAT") + 4
        png[start : start + 64] = bytes(64)  # the zlib stream is garbage; the chunk structure is intact
        with pytest.raises(grpc.RpcError) as refused:
            _store(marking, operator, account, _generated(bytes(png)))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert refused.value.details().startswith("items[0].data: is a PNG whose pixels cannot be decoded")  # type: ignore[attr-defined]
        with pool.connection() as conn:
            assert conn.execute("SELECT count(*) FROM content").fetchone()[0] == 0


class TestVerifyProvenance:
    def test_the_watermark_names_the_item_in_a_stripped_quality_90_jpeg(  # type: ignore[no-untyped-def]
        self, marking, operator, make_account
    ) -> None:
        account = make_account()
        response = _store(marking, operator, account, _generated(_png(512, 6)))
        jpeg = _stripped_jpeg(response.stored_data[0], 90)

        answer = _verify(marking, operator.metadata, jpeg)

        assert answer.media_type == "image/jpeg"
        assert answer.manifest.status == pb.MANIFEST_STATUS_ABSENT
        assert answer.watermark == pb.WATERMARK_STATUS_FOUND
        assert (answer.content_id, answer.identified_by) == (response.contents[0].content_id, "watermark")
        assert answer.model == "tiny-sd" and answer.created_at.ToDatetime() is not None

    def test_another_tenant_learns_only_what_the_marks_say(  # type: ignore[no-untyped-def]
        self, marking, operator, make_account, pool
    ) -> None:
        stored = _store(marking, operator, make_account(), _generated(_png(256, 7))).stored_data[0]
        _, stranger = ensure_operator_key(pool, "other", now=CLOCK_START)
        assert stranger is not None

        answer = _verify(marking, bearer(stranger), stored)

        assert answer.manifest.status == pb.MANIFEST_STATUS_TRUSTED and answer.manifest.content_id
        assert answer.watermark == pb.WATERMARK_STATUS_NOT_FOUND
        assert answer.content_id == "" and answer.model == "" and not answer.eligible_for_training

    def test_an_unmarked_small_image_has_no_marks(self, marking, operator) -> None:  # type: ignore[no-untyped-def]
        answer = _verify(marking, operator.metadata, _png(64))
        assert answer.manifest.status == pb.MANIFEST_STATUS_ABSENT
        assert answer.watermark == pb.WATERMARK_STATUS_TOO_SMALL and answer.content_id == ""

    @pytest.mark.parametrize(
        ("data", "problem"),
        [(b"", "must not be empty"), (b"GIF89a....", "not a PNG, JPEG or WebP"), (_png(256)[:-3000], "truncated")],
        ids=["empty", "not-an-image", "truncated"],
    )
    def test_bad_files_are_invalid_argument_with_a_bad_request(  # type: ignore[no-untyped-def]
        self, marking, operator, data: bytes, problem: str
    ) -> None:
        with pytest.raises(grpc.RpcError) as refused:
            _verify(marking, operator.metadata, data)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
        assert problem in refused.value.details()  # type: ignore[attr-defined]
        status = rpc_status.from_call(refused.value)  # type: ignore[arg-type]
        assert status is not None
        request = error_details_pb2.BadRequest()
        assert any(detail.Unpack(request) for detail in status.details if detail.Is(request.DESCRIPTOR))
        assert [v.field for v in request.field_violations] == ["data"]
