"""Editing through the real gRPC Gateway: uploads stored under retention, edits priced by steps run."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import numpy as np
import PIL.Image
import pytest

from atelier.settings import ClusterSettings
from inference.config import ModelConfig
from inference.pricing import generation_cost
from protos.atelier.v1 import common_pb2, control_plane_pb2, inference_pb2

TINY = ModelConfig(name="tiny-sd")


def _png(width: int, height: int, fmt: str = "PNG") -> bytes:
    yy, xx = np.mgrid[0:height, 0:width]
    pixels = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 90)], -1).astype(np.uint8)
    buffer = io.BytesIO()
    PIL.Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _content(control_plane, operator_metadata, content_id: str) -> control_plane_pb2.GetContentResponse:  # type: ignore[no-untyped-def]
    return control_plane.GetContent(  # type: ignore[no-any-return]
        control_plane_pb2.GetContentRequest(content_id=content_id, include_data=True), metadata=operator_metadata
    )


def _sweep_as_of(settings: ClusterSettings, as_of: datetime) -> dict:  # type: ignore[type-arg]
    """`atelier sweep --as-of` against the session cluster's database and blobs."""
    env = {**os.environ, "ATELIER_HOME": str(settings.home)}
    if settings.database_url is not None:
        env["ATELIER_DATABASE_URL"] = settings.database_url
    if (settings.home / "master.key").exists() and not os.environ.get("ATELIER_MASTER_KEY"):
        env.setdefault("ATELIER_MASTER_KEY_FILE", str(settings.home / "master.key"))
    result = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "sweep", "--as-of", as_of.isoformat(), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def test_models_advertise_editing(inference) -> None:  # type: ignore[no-untyped-def]
    models = inference.ListModels(inference_pb2.ListModelsRequest(), timeout=30).models
    assert models and all(model.supports_editing == (model.backend in ("eager", "compile")) for model in models)


def test_an_edit_streams_its_steps_charges_them_stores_the_upload_and_the_sweep_deletes_it(
    inference, control_plane, operator_metadata, make_account, balance_of, cluster_settings
) -> None:
    account_id = make_account(10)
    # 512x512 at 40 steps costs 2 credits; strength 0.5 runs 20 of them, which cost 1.
    charged_steps = 20
    expected = generation_cost(TINY, width=512, height=512, steps=charged_steps, num_images=1)
    assert expected == 1 < generation_cost(TINY, width=512, height=512, steps=40, num_images=1)
    request = inference_pb2.GenerateRequest(
        account_id=account_id,
        prompt="the same harbour at night",
        width=512,
        height=512,
        steps=40,
        seed=3,
        init_image=_png(800, 600, "JPEG"),
        strength=0.5,
    )
    messages = list(inference.GenerateStream(request, metadata=operator_metadata, timeout=300))
    progress = [m.progress for m in messages if m.HasField("progress")]
    assert [p.step for p in progress] == list(range(1, charged_steps + 1))
    assert {p.total_steps for p in progress} == {charged_steps}
    result = messages[-1].result
    assert len(result.images) == 1
    assert PIL.Image.open(io.BytesIO(result.images[0].png)).size == (512, 512)
    assert result.credits_charged == expected
    balance = balance_of(account_id)
    assert (balance.total, balance.held) == (10 - expected, 0)

    upload = _content(control_plane, operator_metadata, result.upload_content_id)
    assert upload.content.kind == control_plane_pb2.CONTENT_KIND_UPLOAD
    assert upload.content.account_id == account_id
    assert upload.content.visibility == common_pb2.VISIBILITY_PRIVATE
    # The stored upload is the init image as the model got it: fitted to 512x512, PNG.
    assert PIL.Image.open(io.BytesIO(upload.data)).size == (512, 512)

    generated = _content(control_plane, operator_metadata, result.images[0].content_id).content
    assert generated.kind == control_plane_pb2.CONTENT_KIND_GENERATED
    assert generated.parameters.mode == common_pb2.GENERATION_MODE_IMAGE_TO_IMAGE
    assert generated.parameters.source_content_id == result.upload_content_id
    assert generated.parameters.strength == pytest.approx(0.5)
    assert generated.parameters.steps == 40

    # A day later nothing happens to it; past the upload lifetime (24 h) the sweep deletes the upload only.
    _sweep_as_of(cluster_settings, datetime.now(UTC) + timedelta(hours=23))
    assert _content(control_plane, operator_metadata, result.upload_content_id).content.kind
    report = _sweep_as_of(cluster_settings, datetime.now(UTC) + timedelta(hours=25))
    assert report["deleted"]["upload_lifetime"] >= 1, report
    with pytest.raises(grpc.RpcError) as gone:
        _content(control_plane, operator_metadata, result.upload_content_id)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert _content(control_plane, operator_metadata, result.images[0].content_id).data == result.images[0].png


def test_an_inpainting_edit_records_its_mode(inference, control_plane, operator_metadata, make_account) -> None:  # type: ignore[no-untyped-def]
    account_id = make_account(10)
    mask = np.zeros((48, 96), dtype=np.uint8)
    mask[:, 48:] = 255
    buffer = io.BytesIO()
    PIL.Image.fromarray(mask).save(buffer, format="PNG")
    response = inference.Generate(
        inference_pb2.GenerateRequest(
            account_id=account_id,
            prompt="a boat",
            steps=4,
            seed=9,
            num_images=2,
            init_image=_png(96, 48),
            mask_image=buffer.getvalue(),
        ),
        metadata=operator_metadata,
        timeout=300,
    )
    assert len(response.images) == 2 and response.upload_content_id
    assert response.parameters.mode == common_pb2.GENERATION_MODE_INPAINT
    assert response.parameters.strength == pytest.approx(0.75)  # the default
    assert response.parameters.source_content_id == response.upload_content_id


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"init_image": b"this is not an image"}, "init_image"),
        ({"init_image": _png(64, 64), "strength": 1.5}, "strength"),
        ({"strength": 0.5}, "strength"),
        ({"init_image": _png(64, 64), "mask_image": _png(32, 64)}, "mask_image"),
    ],
)
def test_bad_edits_are_invalid_arguments_that_charge_and_store_nothing(  # type: ignore[no-untyped-def]
    inference, control_plane, operator_metadata, make_account, balance_of, fields, field
) -> None:
    account_id = make_account(10)
    with pytest.raises(grpc.RpcError) as error:
        inference.Generate(
            inference_pb2.GenerateRequest(account_id=account_id, prompt="x", steps=2, **fields),
            metadata=operator_metadata,
            timeout=120,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.value.details().startswith(f"{field}: ")
    balance = balance_of(account_id)
    assert (balance.total, balance.held) == (10, 0)
    listed = control_plane.ListContent(
        control_plane_pb2.ListContentRequest(account_id=account_id), metadata=operator_metadata
    )
    assert list(listed.contents) == []


def test_cli_edits_an_image_file(cluster, cluster_settings, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    init = tmp_path / "photo.jpg"
    init.write_bytes(_png(120, 80, "JPEG"))
    env = {**os.environ, "ATELIER_HOME": str(cluster_settings.home)}
    command = [sys.executable, "-m", "atelier.cli", "generate", "a kite", "--steps", "4", "--json"]
    edited = subprocess.run(
        [*command, "--init-image", str(init), "--strength", "0.5", "-o", str(tmp_path / "out.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert edited.returncode == 0, edited.stdout + edited.stderr
    summary = json.loads(edited.stdout)
    assert summary["upload_content_id"] and summary["strength"] == 0.5
    assert PIL.Image.open(tmp_path / "out.png").size == (64, 64)
    missing = subprocess.run(
        [*command, "--init-image", str(tmp_path / "nope.png")], env=env, capture_output=True, text=True, timeout=120
    )
    assert missing.returncode != 0 and "--init-image" in missing.stdout + missing.stderr


def test_a_cancelled_edit_charges_nothing_and_leaves_no_generated_content(  # type: ignore[no-untyped-def]
    inference, control_plane, operator_metadata, make_account, balance_of
) -> None:
    account_id = make_account(10)
    request = inference_pb2.GenerateRequest(
        account_id=account_id, prompt="a storm", width=512, height=512, steps=50, strength=1.0, init_image=_png(64, 64)
    )
    stream = inference.GenerateStream(request, metadata=operator_metadata, timeout=300)
    first = next(stream)
    assert first.HasField("progress") and first.progress.total_steps == 50
    stream.cancel()
    deadline = time.monotonic() + 60
    while (balance := balance_of(account_id)).held and time.monotonic() < deadline:
        time.sleep(0.2)  # the gateway releases the reservation as it unwinds
    assert (balance.total, balance.held) == (10, 0)
    listed = control_plane.ListContent(
        control_plane_pb2.ListContentRequest(account_id=account_id), metadata=operator_metadata
    ).contents
    # Only the upload, stored before the model ran; the retention sweep deletes it with every upload.
    assert [item.kind for item in listed] == [control_plane_pb2.CONTENT_KIND_UPLOAD]
