"""SDXL and the fast backends through a real cluster: a tiny random-weight SDXL checkpoint saved to a local
directory serves on eager, compile and onnxruntime, batched images equal to solo ones; tiny-sd serves
72x72 on onnxruntime from artefacts `atelier models build` made before the cluster started.

The same cluster serves a tiny-sd whose output classifier has a threshold of 0 (every image is judged
above it), so the scanning of generated images is shown end to end: withheld under a blocking profile,
kept private and flagged (and never exported) under a flagging one.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import PIL.Image
import pyarrow.parquet as pq
import pytest

from atelier.ports import local_cluster_ports
from atelier.settings import ClusterSettings
from control_plane import tenants
from control_plane.api_keys import ensure_operator_key
from control_plane.audit import SYSTEM
from control_plane.db.embedded import EmbeddedPostgres
from control_plane.db.pool import Pool, open_pool
from inference.models import build_tiny_sdxl
from protos.atelier.v1 import common_pb2, control_plane_pb2, inference_pb2, training_pb2
from tests.e2e._clusters import cluster_serving, create_account
from tests.e2e.test_privacy_through_gateway import _reason

SDXL_BACKENDS = ("eager", "compile", "onnxruntime")
TINY_ONNX = "tiny-sd-onnx"
# Its classifier's threshold is 0: every image it makes is judged above it.
SCAN_ALL = "tiny-sd-scan-all"
# Each bucket is compiled (or shaped) before the replica is ready: solo requests run at 1, batches at 4.
BUCKETS = {"bucket_batch_sizes": [1, 4], "bucket_sizes": ["64x64", "72x72"]}
# Inductor takes minutes per SDXL graph on two shared cores: the compiled model has one bucket, which
# solo requests are padded to as well (its warm-up compiles it; nothing compiles after).
COMPILE_BUCKETS = {"bucket_batch_sizes": [4], "bucket_sizes": ["64x64"]}


def _serve_config(sdxl_dir: Path) -> dict[str, Any]:
    # Four replicas and the gateway share two cores; a batch waits 300 ms for its companions.
    common = {"num_cpus": 0.25, "batch_wait_timeout_ms": 300, "max_ongoing_requests": 4}
    models = [
        {
            "name": f"sdxl-{backend}",
            "source": str(sdxl_dir),
            "backend": backend,
            **common,
            **(COMPILE_BUCKETS if backend == "compile" else BUCKETS),
        }
        for backend in SDXL_BACKENDS
    ]
    models.append({"name": TINY_ONNX, "source": "tiny-sd", "backend": "onnxruntime", **common, **BUCKETS})
    models.append({"name": SCAN_ALL, "source": "tiny-sd", "output_threshold": 0, **common})
    return {"proxy_location": "HeadOnly", "models": models}


def _build(env: dict[str, str]) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "atelier.cli",
            "models",
            "build",
            "--model",
            TINY_ONNX,
            "--backend",
            "onnxruntime",
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return time.perf_counter() - started, json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def fast_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    home = tmp_path_factory.mktemp("fast-home")
    sdxl_dir = home / "checkpoints" / "tiny-sdxl"
    build_tiny_sdxl(seed=0).save_pretrained(sdxl_dir)
    config_path = home / "serve.json"
    config_path.write_text(json.dumps(_serve_config(sdxl_dir)))
    env = {**os.environ, "ATELIER_HOME": str(home), "ATELIER_SERVE_CONFIG": str(config_path)}
    first_s, first = _build(env)
    exports = sorted((home / "models" / "compiled").glob("onnx-*/artefact.json"))
    built_at = [path.stat().st_mtime_ns for path in exports]
    second_s, second = _build(env)
    print(f"[fast] models build: first {first_s:.1f} s {first['models']}, second {second_s:.1f} s {second['models']}")
    settings = ClusterSettings(home=home, **local_cluster_ports(), demo_credits=10, start_timeout_s=1500)
    started = time.perf_counter()
    with cluster_serving(settings, config_path, "fast") as cluster:
        print(f"[fast] cluster up in {time.perf_counter() - started:.1f} s")
        yield {**cluster, "home": home, "exports": exports, "built_at": built_at, "builds": (first, second)}


def _generate(cluster: dict[str, Any], account_id: str, model: str, seed: int, size: int = 64) -> bytes:
    request = inference_pb2.GenerateRequest(
        account_id=account_id, model=model, prompt=f"a lighthouse {seed}", steps=3, seed=seed, width=size, height=size
    )
    return cluster["inference"].Generate(request, metadata=cluster["metadata"], timeout=300).images[0].png  # type: ignore[no-any-return]


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(png)), dtype=np.int16)


def _stats(model: str) -> Any:
    from ray import serve

    return (
        serve.get_deployment_handle(f"DiffusionModel-{model}", app_name="atelier").stats.remote().result(timeout_s=60)
    )


def test_a_second_build_and_the_replica_reuse_the_artefacts_of_the_first(fast_cluster: dict[str, Any]) -> None:
    first, second = fast_cluster["builds"]
    assert [m["model"] for m in first["models"]] == [TINY_ONNX] == [m["model"] for m in second["models"]]
    assert set(first["models"][0]["buckets"]) == {"1x64x64", "4x64x64", "1x72x72", "4x72x72"}
    (export,) = fast_cluster["exports"]
    # The replica found the build's export complete: nothing of it was rebuilt (SDXL's export is its own).
    assert [export.stat().st_mtime_ns] == fast_cluster["built_at"]
    assert len(list((fast_cluster["home"] / "models" / "compiled").glob("onnx-*/artefact.json"))) == 2


def test_list_models_shows_the_buckets_and_that_other_shapes_run_eagerly(fast_cluster: dict[str, Any]) -> None:
    models = {
        m.name: m for m in fast_cluster["inference"].ListModels(inference_pb2.ListModelsRequest(), timeout=30).models
    }
    assert list(models[TINY_ONNX].fast_batch_sizes) == [1, 4]
    assert list(models[TINY_ONNX].fast_sizes) == ["64x64", "72x72"]


def test_tiny_sd_serves_72x72_on_onnxruntime(fast_cluster: dict[str, Any]) -> None:
    account_id = create_account(fast_cluster, 1000)
    png = _generate(fast_cluster, account_id, TINY_ONNX, seed=3, size=72)
    assert PIL.Image.open(io.BytesIO(png)).size == (72, 72)


@pytest.mark.parametrize("backend", SDXL_BACKENDS)
def test_sdxl_from_a_local_checkpoint_batches_to_the_images_it_gives_alone(
    fast_cluster: dict[str, Any], backend: str
) -> None:
    model = f"sdxl-{backend}"
    account_id = create_account(fast_cluster, 1000)
    seeds = [11, 12, 13]
    alone = [_generate(fast_cluster, account_id, model, seed) for seed in seeds]
    before = _stats(model)
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(lambda seed: _generate(fast_cluster, account_id, model, seed), seeds))
    after = _stats(model)
    assert after.batches_run - before.batches_run < len(seeds), "the concurrent requests shared a pipeline call"
    for single, batched in zip(alone, together, strict=True):
        # CPU kernels round differently at different batch sizes: at most one level in 255.
        assert np.abs(_pixels(single) - _pixels(batched)).max() <= 1
    reference = _generate(fast_cluster, account_id, "sdxl-eager", seeds[0])
    assert np.abs(_pixels(alone[0]) - _pixels(reference)).max() <= 1, "every backend gives eager's image"


# --- output scanning ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scan_db(fast_cluster: dict[str, Any]) -> Iterator[Pool]:
    """The cluster's database, to set tenants' profiles and read moderation flags."""
    url = EmbeddedPostgres(fast_cluster["home"].resolve() / "postgres").url()
    assert url is not None
    with open_pool(url, min_size=1, max_size=2) as pool:
        yield pool


def _tenant_following(pool: Pool, name: str, profile: str) -> tuple[tuple[str, str], ...]:
    """An admin key of a new tenant whose accounts follow `profile` (a shipped deploy/policies profile)."""
    principal, secret = ensure_operator_key(pool, name)
    assert secret is not None
    with pool.connection() as conn:
        tenants.set_policy_profile(
            conn,
            tenant_id=principal.tenant_id,
            profile=profile,
            known_profiles={profile},
            actor=SYSTEM,
            now=datetime.now(UTC),
        )
    return (("authorization", f"Bearer {secret}"),)


def _flags(pool: Pool, account_id: str) -> list[tuple[Any, ...]]:
    with pool.connection() as conn:
        return conn.execute(
            "SELECT content_id, stage, action, policy, score FROM moderation_flags WHERE account_id = %s",
            (account_id,),
        ).fetchall()


def _scan_request(account_id: str, model: str = SCAN_ALL, **fields: Any) -> inference_pb2.GenerateRequest:
    return inference_pb2.GenerateRequest(
        account_id=account_id, model=model, prompt="a lighthouse at dusk", steps=2, seed=5, **fields
    )


def test_a_blocking_profile_withholds_an_image_over_the_threshold_charges_nothing_and_flags_it(
    fast_cluster: dict[str, Any], scan_db: Pool
) -> None:
    metadata = _tenant_following(scan_db, "scan block", "credits-moderated")
    account_id = create_account({**fast_cluster, "metadata": metadata}, 50)
    with pytest.raises(grpc.RpcError) as caught:
        fast_cluster["inference"].Generate(_scan_request(account_id, num_images=2), metadata=metadata, timeout=300)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(caught.value) == "OUTPUT_BLOCKED"
    control = fast_cluster["control_plane"]
    balance = control.GetBalance(control_plane_pb2.GetBalanceRequest(account_id=account_id), metadata=metadata).balance
    assert (balance.total, balance.held) == (50, 0)
    listed = control.ListContent(control_plane_pb2.ListContentRequest(account_id=account_id), metadata=metadata)
    assert not listed.contents
    flags = _flags(scan_db, account_id)
    assert len(flags) == 2, "one flag per image over the threshold"
    assert {flag[:4] for flag in flags} == {(None, "output", "blocked", "classifier:tiny-safety-checker")}


def test_a_flagging_profile_keeps_the_image_private_flagged_and_out_of_every_training_export(
    fast_cluster: dict[str, Any], scan_db: Pool, tmp_path: Path
) -> None:
    # Under this profile an adult's private images are exported for training (opt-out): only the flag keeps
    # the scanned one out.
    metadata = _tenant_following(scan_db, "scan flag", "opt-out-guardian-consent")
    account_id = create_account({**fast_cluster, "metadata": metadata}, 50)
    public = common_pb2.VISIBILITY_PUBLIC
    answer = fast_cluster["inference"].Generate(
        _scan_request(account_id, visibility=public), metadata=metadata, timeout=300
    )
    assert answer.credits_charged > 0
    [image] = answer.images
    control = fast_cluster["control_plane"]
    stored = control.GetContent(control_plane_pb2.GetContentRequest(content_id=image.content_id), metadata=metadata)
    assert stored.content.visibility == common_pb2.VISIBILITY_PRIVATE
    [(content_id, stage, action, _, score)] = _flags(scan_db, account_id)
    assert (str(content_id), stage, action) == (image.content_id, "output", "flagged") and score is not None
    with pytest.raises(grpc.RpcError) as caught:
        control.SetVisibility(
            control_plane_pb2.SetVisibilityRequest(content_id=image.content_id, visibility=public), metadata=metadata
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION and _reason(caught.value) == "CONTENT_FLAGGED"

    # An image of the same account from a model whose classifier lets it pass is exported; the flagged one not.
    passed = (
        fast_cluster["inference"]
        .Generate(_scan_request(account_id, model=TINY_ONNX), metadata=metadata, timeout=300)
        .images[0]
    )
    assert _flags(scan_db, account_id) == [(content_id, stage, action, "classifier:tiny-safety-checker", score)]
    eligibility = fast_cluster["training"].CheckTrainingEligibility(
        training_pb2.CheckTrainingEligibilityRequest(sha256=image.sha256), metadata=metadata
    )
    assert not eligibility.eligible and eligibility.reason == training_pb2.INELIGIBILITY_REASON_FLAGGED
    result = subprocess.run(
        [sys.executable, "-m", "atelier.cli", "export", "training", "-o", str(tmp_path), "--no-images", "--json"],
        env={**os.environ, "ATELIER_HOME": str(fast_cluster["home"])},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    exported = {row["sha256"] for row in pq.read_table(json.loads(result.stdout)["directory"]).to_pylist()}
    assert passed.sha256 in exported and image.sha256 not in exported
