"""`atelier sweep` and `atelier export training|removals` against the session's database and server."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from atelier.cli import main
from protos.atelier.v1 import common_pb2
from protos.atelier.v1 import control_plane_pb2 as pb
from tests.integration.control_plane._training import grant_training_consent, live_ids, store


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:  # type: ignore[type-arg]
    code = main([*argv, "--json"])
    output = capsys.readouterr().out
    assert code == 0, output
    return json.loads(output)


def test_sweep_once_as_of_a_time_deletes_what_is_due_then(  # type: ignore[no-untyped-def]
    cli_env, capsys, pool, clock, stub, operator, make_account
) -> None:
    account = make_account(credits=5)
    store(stub, operator, account, 2)
    before = _run(capsys, "sweep", "--once", "--as-of", (clock.now() + timedelta(days=29)).isoformat())
    after = _run(capsys, "sweep", "--as-of", (clock.now() + timedelta(days=30)).isoformat())
    assert (before["total"], after["deleted"]["generated_retention"]) == (0, 2)
    assert live_ids(pool) == set()


def test_a_malformed_as_of_is_refused(cli_env, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["sweep", "--as-of", "yesterday", "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"]["code"] == "INVALID_ARGUMENT"


def test_export_training_then_removals_with_a_cursor(  # type: ignore[no-untyped-def]
    cli_env, capsys, tmp_path: Path, clock, stub, operator, make_account
) -> None:
    account = make_account(credits=5)
    grant_training_consent(stub, operator, account)
    store(stub, operator, account, 2, visibility=common_pb2.VISIBILITY_PUBLIC)
    exported = _run(capsys, "export", "training", "-o", str(tmp_path / "exports"), "--as-of", clock.now().isoformat())
    assert exported["items"] == 2
    assert (Path(exported["directory"]) / "_manifest.json").is_file()

    first = _run(capsys, "export", "removals", exported["export_id"])
    assert first["removals"] == []
    stub.RequestErasure(pb.RequestErasureRequest(account_id=account), metadata=operator.metadata)
    second = _run(capsys, "export", "removals", exported["export_id"], "--since", first["next_cursor"])
    assert [r["reason"] for r in second["removals"]] == ["erased", "erased"]
    third = _run(capsys, "export", "removals", exported["export_id"], "--since", second["next_cursor"])
    assert third["removals"] == []
