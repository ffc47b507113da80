"""Provenance through the real cluster: images from `atelier generate` carry a signed C2PA manifest
(read here with c2pa-python itself) and an invisible watermark that `atelier provenance verify`
finds again in a re-encoded copy without metadata.

The tiny default model makes 64x64 images, too small for the DWT-DCT watermark (256x256 at least):
these tests generate at 256x256, where it fits; 64x64 images carry the manifest only.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import c2pa
import grpc
import numpy as np
import PIL.Image

from atelier.settings import ClusterSettings
from protos.atelier.v1 import common_pb2, control_plane_pb2, inference_pb2
from protos.atelier.v1 import training_pb2 as tpb
from protos.atelier.v1.training_pb2_grpc import TrainingDataStub

SIZE = "256"
TRAINED = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def _atelier(settings: ClusterSettings, *args: str) -> dict[str, Any]:
    env = {**os.environ, "ATELIER_HOME": str(settings.home)}
    result = subprocess.run(
        [sys.executable, "-m", "atelier.cli", *args, "--json"], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _generate(settings: ClusterSettings, account_id: str, out: Path, *extra: str) -> dict[str, Any]:
    return _atelier(
        settings, "generate", "--account", account_id, "a lighthouse", "--steps", "2", "--width", SIZE,
        "--height", SIZE, "-o", str(out), *extra,
    )  # fmt: skip


def _manifest(settings: ClusterSettings, path: Path) -> tuple[str, dict[str, Any]]:
    """The validation state and active manifest, as c2pa-python reads them against the cluster's
    development root certificate."""
    anchors = (settings.home / "c2pa" / "root.pem").read_text()
    context = c2pa.Context(settings=c2pa.Settings.from_dict({"trust": {"trust_anchors": anchors}}))
    with c2pa.Reader("image/png", io.BytesIO(path.read_bytes()), context=context) as reader:
        return str(reader.get_validation_state()), dict(reader.get_active_manifest() or {})


def _assertion(manifest: dict[str, Any], label: str) -> dict[str, Any]:
    return next(a["data"] for a in manifest["assertions"] if a["label"] == label)


def test_a_generated_image_has_a_trusted_manifest_of_a_trained_algorithmic_creation(
    cluster, cluster_settings, make_account, tmp_path: Path
) -> None:
    out = tmp_path / "created.png"
    summary = _generate(cluster_settings, make_account(5), out)

    state, manifest = _manifest(cluster_settings, out)

    assert state == "Trusted"
    [action] = _assertion(manifest, "c2pa.actions.v2")["actions"]
    assert (action["action"], action["digitalSourceType"]) == ("c2pa.created", TRAINED)
    content = _assertion(manifest, "org.atelier.content")
    assert content["content_id"] == summary["content_ids"][0] and content["model"] == "tiny-sd"
    assert "a lighthouse" not in json.dumps(manifest)


def test_an_edit_is_signed_as_edited_with_the_upload_as_ingredient(
    inference, operator_metadata, make_account, cluster_settings, tmp_path: Path
) -> None:
    pixels = (np.random.default_rng(1).random((256, 256, 3)) * 255).astype(np.uint8)
    init = io.BytesIO()
    PIL.Image.fromarray(pixels).save(init, format="PNG")
    request = inference_pb2.GenerateRequest(
        account_id=make_account(5), prompt="the harbour", width=256, height=256, steps=4, strength=0.5,
        init_image=init.getvalue(),
    )  # fmt: skip
    result = inference.Generate(request, metadata=operator_metadata, timeout=300)
    out = tmp_path / "edited.png"
    out.write_bytes(result.images[0].png)

    state, manifest = _manifest(cluster_settings, out)

    assert state == "Trusted"
    actions = [a["action"] for a in _assertion(manifest, "c2pa.actions.v2")["actions"]]
    assert actions == ["c2pa.opened", "c2pa.edited"]
    assert [i["relationship"] for i in manifest["ingredients"]] == ["parentOf"]


def test_after_an_opt_out_the_next_image_says_not_allowed_and_verify_finds_it_in_a_stripped_jpeg(
    cluster, cluster_settings, control_plane, operator_metadata, make_account, tmp_path: Path
) -> None:
    account_id = make_account(10)
    # The default profile is opt-in and keeps private content out: consent and public make it eligible.
    _atelier(cluster_settings, "consent", "grant", account_id, "training")
    _atelier(cluster_settings, "gallery", "default", account_id, "public")
    before, after = tmp_path / "before.png", tmp_path / "after.png"
    _generate(cluster_settings, account_id, before)
    with grpc.insecure_channel(cluster.control_plane_address) as channel:
        TrainingDataStub(channel).OptOut(
            tpb.OptOutRequest(account_id=account_id, source="settings"), metadata=operator_metadata, timeout=30
        )
    summary = _generate(cluster_settings, account_id, after)

    uses = [_assertion(_manifest(cluster_settings, p)[1], "cawg.training-mining") for p in (before, after)]
    assert [u["entries"]["cawg.ai_training"]["use"] for u in uses] == ["allowed", "notAllowed"]

    jpeg = tmp_path / "reposted.jpg"
    PIL.Image.open(after).convert("RGB").save(jpeg, format="JPEG", quality=90)  # no metadata is written
    verified = _atelier(cluster_settings, "provenance", "verify", str(jpeg))
    assert verified["manifest"]["status"] == "MANIFEST_STATUS_ABSENT"
    assert verified["watermark"] == "WATERMARK_STATUS_FOUND"
    assert verified["content_id"] == summary["content_ids"][0]
    assert verified["identified_by"] == "watermark" and verified["model"] == "tiny-sd"
    assert verified.get("eligible_for_training", False) is False and "opted out" in verified["training_explanation"]
    stored = control_plane.GetContent(
        control_plane_pb2.GetContentRequest(content_id=verified["content_id"], include_data=True),
        metadata=operator_metadata,
    )
    assert stored.data == after.read_bytes() and stored.content.visibility == common_pb2.VISIBILITY_PUBLIC
