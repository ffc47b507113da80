"""Privacy rights through the real cluster: moderation at the gateway, and the privacy CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from atelier.settings import ClusterSettings
from protos.atelier.v1 import control_plane_pb2, inference_pb2
from transport.call_metadata import ACTING_ACCOUNT


def _atelier(settings: ClusterSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ATELIER_HOME": str(settings.home)}
    return subprocess.run(
        [sys.executable, "-m", "atelier.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def _json(settings: ClusterSettings, *args: str) -> dict:  # type: ignore[type-arg]
    result = _atelier(settings, *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def _reason(error: grpc.RpcError) -> str | None:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return None


def test_a_blocked_prompt_is_refused_by_the_gateway_and_charges_nothing(
    inference, control_plane, operator_metadata, make_account, balance_of
) -> None:
    account_id = make_account(10)
    with pytest.raises(grpc.RpcError) as error:
        inference.Generate(
            inference_pb2.GenerateRequest(account_id=account_id, prompt="a gore scene, beheading", steps=2),
            metadata=operator_metadata,
            timeout=120,
        )
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert _reason(error.value) == "PROMPT_BLOCKED"
    balance = balance_of(account_id)
    assert (balance.total, balance.held) == (10, 0)
    listed = control_plane.ListContent(
        control_plane_pb2.ListContentRequest(account_id=account_id), metadata=operator_metadata
    )
    assert list(listed.contents) == []


def test_the_gateway_forwards_the_acting_account_so_another_users_generation_is_not_found(
    inference, control_plane, operator_metadata, make_account, balance_of
) -> None:
    # A web app's key: it must name the signed-in user, and may only spend that user's credits.
    web = control_plane.CreateApiKey(
        control_plane_pb2.CreateApiKeyRequest(
            name="web app", scopes=[control_plane_pb2.SCOPE_GENERATE, control_plane_pb2.SCOPE_READ]
        ),
        metadata=operator_metadata,
    ).secret
    owner, other = make_account(5), make_account(5)
    request = inference_pb2.GenerateRequest(account_id=owner, prompt="a quiet harbour", steps=2)
    bearer = (("authorization", f"Bearer {web}"),)
    for metadata, code in [
        ((*bearer, (ACTING_ACCOUNT, other)), grpc.StatusCode.NOT_FOUND),
        (bearer, grpc.StatusCode.PERMISSION_DENIED),
    ]:
        with pytest.raises(grpc.RpcError) as error:
            inference.Generate(request, metadata=metadata, timeout=120)
        assert error.value.code() == code
    assert (balance_of(owner).total, balance_of(owner).held) == (5, 0)

    response = inference.Generate(request, metadata=(*bearer, (ACTING_ACCOUNT, owner)), timeout=120)
    assert response.credits_charged >= 1 and balance_of(owner).total == 5 - response.credits_charged


def test_the_privacy_commands_walk_an_account_from_generation_to_erasure(
    cluster, cluster_settings, tmp_path: Path
) -> None:
    account_id = _json(cluster_settings, "account", "create", "--credits", "5", "--birth-date", "1990-04-01")[
        "account_id"
    ]
    generated = _json(
        cluster_settings,
        "generate",
        "--account",
        account_id,
        "a red kite",
        "--steps",
        "2",
        "-o",
        str(tmp_path / "k.png"),
    )
    assert generated["credits_charged"] >= 1

    assert _json(cluster_settings, "gallery", "visibility", "public", "--account", account_id)["updated_count"] == 1
    assert _json(cluster_settings, "consent", "grant", account_id, "training")["granted"] is True
    shown = _json(cluster_settings, "consent", "show", account_id)
    assert shown["consents"]["training"] == {"granted": True, "explicit": True}

    exported = _json(cluster_settings, "dsr", "export", account_id, "-o", str(tmp_path / "export"))
    assert exported["images"] == 1 and (tmp_path / "export" / "account.json").is_file()
    assert json.loads((tmp_path / "export" / "consents.json").read_text())[0]["purpose"] == "training"

    master_key = cluster_settings.home / "master.key"
    assert oct(master_key.stat().st_mode & 0o777) == "0o600"  # created by `atelier up`
    rotated = _json(cluster_settings, "keys", "rotate-master")
    assert rotated["rewrapped_keys"] >= 1 and rotated["key_id"] != rotated["previous_key_id"]

    erased = _json(cluster_settings, "dsr", "erase", account_id)
    assert erased["state"] == "completed"
    listing = _json(cluster_settings, "dsr", "list", "--account", account_id)
    assert [r["kind"] for r in listing["requests"]] == ["export", "erasure"]
    assert _json(cluster_settings, "dsr", "list", "--overdue", "--as-of", "2099-01-01T00:00:00Z")["requests"] == []

    trail = _json(cluster_settings, "audit", "--account", account_id)
    actions = [entry["action"] for entry in trail["entries"]]
    assert {"account.create", "content.store", "consent.record", "account.erase"} <= set(actions)
    assert "a red kite" not in json.dumps(trail)
