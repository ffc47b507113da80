"""Generates the Python stubs (and .pyi type stubs) of `protos/atelier/v1/*.proto`: `make protos`.

The .proto files are compiled as any other team compiles them, with `protos` as the import root
(`protoc -I protos`, imports as "atelier/v1/common.proto"). protoc then writes Python imports such
as `from atelier.v1 import common_pb2`, which in this repository would name the `atelier` CLI
package, so the generated modules are rewritten to import and name each other as
`protos.atelier.v1.*`, the package callers import.

Usage: python protos/generate.py [OUTPUT_ROOT]  (default: this checkout; stubs land in
OUTPUT_ROOT/protos/atelier/v1).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PROTO_ROOT = Path(__file__).resolve().parent
"""The import root of the .proto files (this directory)."""
SOURCES = sorted(path.relative_to(PROTO_ROOT).as_posix() for path in (PROTO_ROOT / "atelier" / "v1").glob("*.proto"))
"""The .proto files, relative to PROTO_ROOT: atelier/v1/common.proto, ..."""

# `from atelier.v1 import x_pb2`, `import atelier.v1.x_pb2` and the module names the generated code
# registers its classes under ('atelier.v1.x_pb2'), but never the proto package itself ("atelier.v1.Visibility").
_MODULE_REFERENCE = re.compile(r"(?<![\w.])atelier\.v1(?=\.\w+_pb2(_grpc)?\b| import )")


def generate(output_root: Path) -> list[Path]:
    """Writes the stubs of every .proto under `output_root / "protos"`; returns the files written.

    Raises:
        subprocess.CalledProcessError: protoc rejected a .proto (its message is on stderr).
    """
    out = output_root / "protos"
    out.mkdir(parents=True, exist_ok=True)
    bin_dir = Path(sys.executable).parent  # protoc-gen-mypy and protoc-gen-mypy_grpc live beside python
    flags = [f"--{kind}_out={out}" for kind in ("python", "grpc_python", "mypy", "mypy_grpc")]
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", str(PROTO_ROOT), *flags, *SOURCES],
        check=True,
        capture_output=True,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"},
    )
    written = sorted(path for path in (out / "atelier" / "v1").glob("*_pb2*.py*"))
    for path in written:
        path.write_text(_MODULE_REFERENCE.sub("protos.atelier.v1", path.read_text()))
    return written


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent
    for written in generate(root):
        print(written)
