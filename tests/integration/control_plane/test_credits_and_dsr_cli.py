"""`atelier credits ledger`, `atelier dsr export` and `atelier generate -o` against the session's server."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from atelier.cli import main
from protos.atelier.v1 import control_plane_pb2 as pb
from protos.atelier.v1.control_plane_pb2_grpc import ControlPlaneStub
from tests.integration.control_plane._support import bearer


def _run(capsys: pytest.CaptureFixture[str], *argv: str, expect: int = 0) -> dict[str, Any]:
    code = main([*argv, "--json"])
    output = capsys.readouterr().out
    assert code == expect, output
    return json.loads(output)  # type: ignore[no-any-return]


def _account(stub: ControlPlaneStub, secret: str, credits: int) -> str:
    request = pb.CreateAccountRequest(birth_date="1990-05-17", initial_credits=credits)
    return str(stub.CreateAccount(request, metadata=bearer(secret)).account.account_id)


def test_ledger_lists_grants_and_charges_newest_first_up_to_the_limit(
    cli_env: Path, capsys: pytest.CaptureFixture[str], stub: ControlPlaneStub, operator: Any
) -> None:
    account_id = _account(stub, operator.secret, 10)
    _run(capsys, "credits", "grant", account_id, "5", "--reason", "refund")
    reserved = stub.ReserveCredits(
        pb.ReserveCreditsRequest(account_id=account_id, amount=3, purpose="test"), metadata=bearer(operator.secret)
    ).reservation
    stub.CommitReservation(
        pb.CommitReservationRequest(reservation_id=reserved.reservation_id), metadata=bearer(operator.secret)
    )

    entries = _run(capsys, "credits", "ledger", account_id)["entries"]
    assert [(e["kind"], e["delta"]) for e in entries] == [("charge", -3), ("grant", 5), ("grant", 10)]
    assert entries[0]["reservation_id"] == reserved.reservation_id and entries[1]["reason"] == "refund"
    assert sum(e["delta"] for e in entries) == _run(capsys, "credits", "balance", account_id)["total"]

    limited = _run(capsys, "credits", "ledger", account_id, "--limit", "2")
    assert [e["delta"] for e in limited["entries"]] == [-3, 5] and limited["more"] is True


def test_dsr_export_files_are_readable_by_this_user_only(
    cli_env: Path, capsys: pytest.CaptureFixture[str], stub: ControlPlaneStub, operator: Any, tmp_path: Path
) -> None:
    account_id = _account(stub, operator.secret, 1)
    output = tmp_path / "export"
    exported = _run(capsys, "dsr", "export", account_id, "-o", str(output))
    assert exported["files"], exported
    paths = [output, *output.rglob("*")]
    modes = {path.relative_to(tmp_path).as_posix(): stat.S_IMODE(path.stat().st_mode) for path in paths}
    assert all(mode == (0o700 if (tmp_path / name).is_dir() else 0o600) for name, mode in modes.items()), modes


def test_generate_refuses_an_unwritable_output_before_calling_the_cluster(
    cli_env: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # The cluster's inference address in cli_env answers nothing: reaching it would be UNAVAILABLE.
    refused = _run(capsys, "generate", "a fox", "--account", "x", "-o", str(blocker / "out.png"), expect=1)
    assert refused["error"]["code"] == "INVALID_ARGUMENT"
    assert refused["error"]["message"].startswith(f"-o {blocker / 'out.png'}: cannot create {blocker}")
