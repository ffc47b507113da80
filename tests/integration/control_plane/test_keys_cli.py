"""`atelier keys list|create|rotate|revoke` against the session's server, as an operator runs them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import pytest

from atelier.cli import main
from atelier.state import load_operator_key
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import Caller, bearer


def _keys(capsys: pytest.CaptureFixture[str], *argv: str, expect: int = 0) -> dict[str, Any]:
    code = main(["keys", *argv, "--json"])
    output = capsys.readouterr().out
    assert code == expect, output
    return json.loads(output)  # type: ignore[no-any-return]


def _who_am_i(stub: ControlPlaneStub, secret: str) -> grpc.StatusCode:
    try:
        stub.WhoAmI(pb.WhoAmIRequest(), metadata=bearer(secret))
    except grpc.RpcError as error:
        return error.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_create_prints_a_working_secret_once_and_list_shows_the_key(
    cli_env: Path, capsys: pytest.CaptureFixture[str], stub: ControlPlaneStub
) -> None:
    created = _keys(capsys, "create", "--name", "gateway", "--scope", "generate", "--scope", "read")
    assert created["key"]["scopes"] == ["generate", "read"]
    assert created["secret"].startswith(f"atk_{created['key']['key_id']}_")
    assert _who_am_i(stub, created["secret"]) == grpc.StatusCode.OK

    listed = _keys(capsys, "list")["keys"]
    assert {key["name"] for key in listed} == {"gateway", "operator"}
    assert all(key["active"] and key["revoked_at"] is None for key in listed)
    assert not any("secret" in key for key in listed)


def test_the_text_output_shows_the_secret_and_a_warning(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--name", "batch", "--scope", "read"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("created key ak_") and lines[0].endswith("(batch: read)")
    assert lines[1].startswith("secret: atk_")
    assert "shown only now" in lines[2]


def test_rotate_with_grace_keeps_the_old_secret_working_until_revoked(
    cli_env: Path, capsys: pytest.CaptureFixture[str], stub: ControlPlaneStub
) -> None:
    old = _keys(capsys, "create", "--name", "gateway", "--scope", "generate")
    rotated = _keys(capsys, "rotate", old["key"]["key_id"], "--grace", "600")
    assert rotated["previous"]["replaced_by_key_id"] == rotated["key"]["key_id"]
    assert rotated["operator_key_updated"] is False
    assert _who_am_i(stub, old["secret"]) == grpc.StatusCode.OK
    assert _who_am_i(stub, rotated["secret"]) == grpc.StatusCode.OK

    revoked = _keys(capsys, "revoke", old["key"]["key_id"])
    again = _keys(capsys, "revoke", old["key"]["key_id"])
    assert revoked["key"]["revoked_at"] == again["key"]["revoked_at"]
    assert _who_am_i(stub, old["secret"]) == grpc.StatusCode.UNAUTHENTICATED
    statuses = {key["key_id"]: key["active"] for key in _keys(capsys, "list")["keys"]}
    assert statuses[old["key"]["key_id"]] is False and statuses[rotated["key"]["key_id"]] is True


def test_rotating_the_operator_key_updates_the_homes_key_file(
    cli_env: Path, capsys: pytest.CaptureFixture[str], stub: ControlPlaneStub, operator: Caller
) -> None:
    rotated = _keys(capsys, "rotate", operator.principal.key_id)
    assert rotated["operator_key_updated"] is True
    assert load_operator_key(cli_env) == rotated["secret"]
    assert _who_am_i(stub, operator.secret) == grpc.StatusCode.UNAUTHENTICATED
    # The next command authenticates with the new secret.
    assert len(_keys(capsys, "list")["keys"]) == 2


def test_refusals_are_one_line_json_errors(cli_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = _keys(capsys, "revoke", "ak_0123456789abcdef", expect=1)
    assert missing["error"]["code"] == "NOT_FOUND"
    bad_grace = _keys(capsys, "rotate", "ak_0123456789abcdef", "--grace", "90000", expect=1)
    assert bad_grace["error"] == {"code": "INVALID_ARGUMENT", "message": "--grace must be 0..86400 seconds"}
    malformed = _keys(capsys, "rotate", "not-a-key", expect=1)
    assert malformed["error"]["code"] == "INVALID_ARGUMENT"
