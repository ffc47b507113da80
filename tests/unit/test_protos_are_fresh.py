"""The committed stubs are exactly what `make protos` generates from the .proto files."""

from __future__ import annotations

from pathlib import Path

from protos.generate import PROTO_ROOT, generate

GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def test_generated_stubs_match_proto_sources(tmp_path: Path) -> None:
    protos = sorted((PROTO_ROOT / "atelier" / "v1").glob("*.proto"))
    assert protos, "no .proto sources found"
    generate(tmp_path)  # what `make protos` runs, into an empty tree
    stale = []
    for proto in protos:
        for suffix in GENERATED_SUFFIXES:
            name = proto.stem + suffix
            committed = PROTO_ROOT / "atelier" / "v1" / name
            fresh = tmp_path / "protos" / "atelier" / "v1" / name
            if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
                stale.append(name)
    assert not stale, f"stale gRPC stubs {stale}: run `make protos` and commit the result"


def test_generated_stubs_import_each_other_as_the_protos_package() -> None:
    # protoc -I protos writes `from atelier.v1 import ...`, which would import the CLI package.
    for stub in (PROTO_ROOT / "atelier" / "v1").glob("*_pb2*.py"):
        for line in stub.read_text().splitlines():
            if line.startswith(("from atelier", "import atelier")):
                raise AssertionError(f"{stub.name}: {line}")
