"""The committed stubs are exactly what `make protos` generates from the .proto files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = Path("protos/atelier/v1")
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def test_generated_stubs_match_proto_sources(tmp_path: Path) -> None:
    protos = sorted((ROOT / PROTO_DIR).glob("*.proto"))
    assert protos, "no .proto sources found"
    for proto in protos:
        (tmp_path / PROTO_DIR).mkdir(parents=True, exist_ok=True)
        shutil.copy(proto, tmp_path / PROTO_DIR / proto.name)
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            ".",
            "--python_out=.",
            "--grpc_python_out=.",
            "--mypy_out=.",
            "--mypy_grpc_out=.",
            *(str(PROTO_DIR / p.name) for p in protos),
        ],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin"},
    )
    stale = []
    for proto in protos:
        for suffix in GENERATED_SUFFIXES:
            name = proto.stem + suffix
            committed = ROOT / PROTO_DIR / name
            fresh = tmp_path / PROTO_DIR / name
            if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
                stale.append(name)
    assert not stale, f"stale gRPC stubs {stale}: run `make protos` and commit the result"
