"""The protos as other teams consume them: compiled on their own, lint-clean, no breaking change
since the last release, every ErrorInfo reason listed.

buf comes from `make proto-tools` (npm's @bufbuild/buf, into .tools/), as promtool comes from
`make chart-tools`: `make test` installs both.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from protos.atelier.v1 import common_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "protos"
BASELINE = "atelier-v1-baseline.binpb"
REASON_PREFIX = "ERROR_REASON_"
# Where code sends ErrorInfo reasons: the domain errors' `reason="..."`, and constants named after
# their value (the gateway's `_POOL_UNAVAILABLE = "POOL_UNAVAILABLE"`).
_REASON_LITERAL = re.compile(r"""reason\s*=\s*"([A-Z][A-Z0-9_]+)"|^_?([A-Z][A-Z0-9_]+)\s*=\s*"\2"\s*$""", re.M)
_REASON_SOURCES = ("control_plane", "inference")
_NOT_REASONS = {"RUNNING"}
"""Constants named after their value that are no ErrorInfo reason (Serve's replica state)."""


@pytest.fixture(scope="module")
def buf() -> str:
    found = ROOT / ".tools" / "node_modules" / ".bin" / "buf"
    path = str(found) if found.exists() else shutil.which("buf")
    assert path is not None, "buf is not installed: run `make proto-tools`"
    return path


def _run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_protos_compile_on_their_own_with_protos_as_the_import_root(tmp_path: Path) -> None:
    sources = sorted(p.relative_to(PROTOS).as_posix() for p in (PROTOS / "atelier" / "v1").glob("*.proto"))
    result = _run([sys.executable, "-m", "grpc_tools.protoc", "-I", "protos", *[f"protos/{s}" for s in sources],
                   f"--python_out={tmp_path}", f"--descriptor_set_out={tmp_path / 'all.binpb'}"], ROOT)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (tmp_path / "atelier" / "v1").glob("*_pb2.py")) == [
        "common_pb2.py",
        "control_plane_pb2.py",
        "inference_pb2.py",
        "training_pb2.py",
    ]


def test_every_proto_names_its_go_and_java_packages() -> None:
    for proto in (PROTOS / "atelier" / "v1").glob("*.proto"):
        text = proto.read_text()
        assert 'option go_package = "' in text and 'option java_package = "' in text, proto.name


def test_buf_lint_is_clean(buf: str) -> None:
    result = _run([buf, "lint"], PROTOS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_no_breaking_change_since_the_last_release(buf: str) -> None:
    result = _run([buf, "breaking", "--against", BASELINE], PROTOS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_buf_breaking_catches_a_renamed_enum_value(buf: str, tmp_path: Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy, ignore=shutil.ignore_patterns("*.py", "*.pyi", "__pycache__"))
    common = copy / "atelier" / "v1" / "common.proto"
    common.write_text(common.read_text().replace("VISIBILITY_PUBLIC = 2;", "VISIBILITY_WORLD = 2;"))
    result = _run([buf, "breaking", "--against", BASELINE], copy)
    assert result.returncode != 0 and "VISIBILITY_PUBLIC" in result.stdout, result.stdout + result.stderr


def test_every_error_info_reason_the_code_sends_is_listed_in_common_proto() -> None:
    listed = {name.removeprefix(REASON_PREFIX) for name in common_pb2.ErrorReason.DESCRIPTOR.values_by_name} - {
        "UNSPECIFIED"
    }
    sent = set()
    for package in _REASON_SOURCES:
        for source in (ROOT / package).rglob("*.py"):
            for match in _REASON_LITERAL.finditer(source.read_text()):
                sent.add(match.group(1) or match.group(2))
    # AccountNotActive sends ACCOUNT_<status> for the statuses that forbid generating.
    sent |= {"ACCOUNT_SUSPENDED", "ACCOUNT_ERASED"}
    unlisted = sent - listed - _NOT_REASONS
    assert not unlisted, f"ErrorInfo reasons sent but not in common.proto's ErrorReason: {sorted(unlisted)}"
    assert {"DATABASE_UNAVAILABLE", "POOL_UNAVAILABLE", "REPLICA_FAILED", "POOL_AT_CAPACITY"} <= listed
