#!/usr/bin/env bash
# Builds the Dockerfile's slim `cpu` image without a container engine (no Docker daemon, no base image
# pull): mmdebstrap makes a minimal Debian bookworm root, pip installs torch (CPU) and the project into
# /opt/atelier inside it (chroot), a smoke test runs `atelier --help` and `python -m control_plane --help`
# there, and buildah commits the folder from scratch (vfs storage) as an OCI image.
#
# Differences from the Dockerfile: Debian's python3 (3.11.2) instead of python.org's, and one stage.
# Needs root, mmdebstrap and buildah (`apt-get install mmdebstrap buildah`), Debian and PyPI mirrors.
#
#   deploy/docker/build-rootfs.sh                       # -> build/image/atelier-cpu.oci.tar
#   WHEELS_DIR=/opt/wheels TORCH_PIP_ARGS="--find-links /wheels" deploy/docker/build-rootfs.sh
#       (torch from a folder of local wheels, mounted at /wheels, when the CPU index is out of reach)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
DOCKERFILE="$REPO/deploy/docker/Dockerfile"
OUT=${OUT:-$REPO/build/image}
ROOTFS="$OUT/rootfs"
IMAGE=${IMAGE:-localhost/atelier:cpu}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
TORCH_PIP_ARGS=${TORCH_PIP_ARGS:---index-url https://download.pytorch.org/whl/cpu}
WHEELS_DIR=${WHEELS_DIR:-}
STORAGE=(--storage-driver vfs)

# The pins live in the Dockerfile only.
pin() { sed -n "s/^ARG $1=//p" "$DOCKERFILE"; }
RAY_VERSION=$(pin RAY_VERSION)
TORCH_VERSION=$(pin TORCH_VERSION)
PIP_VERSION=$(pin PIP_VERSION)

[ "$(id -u)" = 0 ] || { echo "build-rootfs.sh: needs root (chroot, mounts)" >&2; exit 1; }
mkdir -p "$OUT"
rm -rf "$ROOTFS"

echo "== mmdebstrap: Debian bookworm (minbase) with python3, bash, wget, grep, tini"
# shellcheck disable=SC2016  # the hooks' "$1" (the root) is expanded by mmdebstrap, not here
mmdebstrap --mode=root --variant=minbase \
  --include=python3,python3-venv,bash,wget,grep,ca-certificates,tini \
  --customize-hook='chroot "$1" groupadd --gid 1000 atelier' \
  --customize-hook='chroot "$1" useradd --uid 1000 --gid 1000 --home-dir /tmp --no-create-home --shell /bin/bash atelier' \
  --customize-hook='install -d -o 1000 -g 1000 "$1/var/lib/atelier" "$1/var/lib/atelier-blobs"' \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/usr/share/doc/* "$1"/usr/share/man/*' \
  bookworm "$ROOTFS" "$MIRROR"

echo "== pip: torch==$TORCH_VERSION (CPU), then the project with ray[serve]==$RAY_VERSION"
mkdir -p "$ROOTFS/src"
(cd "$REPO" && tar -cf - --exclude=__pycache__ pyproject.toml README.md atelier control_plane inference protos) \
  | tar -xf - -C "$ROOTFS/src"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# pip inside the root trusts what pip outside it does (a proxy's CA, say): $PIP_CERT, else Debian's bundle.
cp "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" "$ROOTFS/tmp/pip-ca.pem"
mounts=()
cleanup() { for m in "${mounts[@]}"; do umount "$m" || true; done; }
trap cleanup EXIT
for fs in proc dev; do mount --bind "/$fs" "$ROOTFS/$fs"; mounts=("$ROOTFS/$fs" "${mounts[@]}"); done
if [ -n "$WHEELS_DIR" ]; then
  mkdir -p "$ROOTFS/wheels" && mount --bind "$WHEELS_DIR" "$ROOTFS/wheels"
  mounts=("$ROOTFS/wheels" "${mounts[@]}")
fi
in_root() { chroot "$ROOTFS" env -i PATH=/opt/atelier/bin:/usr/bin:/bin HOME=/root PIP_NO_CACHE_DIR=1 \
  PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_CERT=/tmp/pip-ca.pem PYTHONDONTWRITEBYTECODE=1 "$@"; }
in_root python3 -m venv /opt/atelier
in_root pip install --quiet "pip==$PIP_VERSION"
# shellcheck disable=SC2086  # TORCH_PIP_ARGS is a list of pip options
in_root pip install --quiet $TORCH_PIP_ARGS "torch==$TORCH_VERSION"
in_root pip install --quiet /src "ray[serve]==$RAY_VERSION"
cleanup; trap - EXIT
# Mount points are removed with rmdir, never rm -r: a failed umount must not reach the host's files.
[ ! -d "$ROOTFS/wheels" ] || rmdir "$ROOTFS/wheels"
rm -rf "$ROOTFS/src" "$ROOTFS/root/.cache" "$ROOTFS/tmp/pip-ca.pem"
: > "$ROOTFS/etc/resolv.conf"

echo "== smoke test as uid 1000 in the root (chroot)"
run_as_user() { chroot --userspec=1000:1000 "$ROOTFS" env -i PATH=/opt/atelier/bin:/usr/bin:/bin HOME=/tmp "$@"; }
run_as_user atelier --help >/dev/null
run_as_user python -m control_plane --help >/dev/null
run_as_user python -c "import ray, torch; assert ray.__version__ == '$RAY_VERSION', ray.__version__; print('ray', ray.__version__, 'torch', torch.__version__)"
for tool in bash wget grep; do run_as_user sh -c "command -v $tool" >/dev/null; done

echo "== buildah: $IMAGE from scratch"
buildah "${STORAGE[@]}" rmi -f "$IMAGE" >/dev/null 2>&1 || true
ctr=$(buildah "${STORAGE[@]}" from scratch)
tar -C "$ROOTFS" -cf "$OUT/rootfs.tar" .
buildah "${STORAGE[@]}" add "$ctr" "$OUT/rootfs.tar" /
rm -f "$OUT/rootfs.tar"
# The same runtime settings as the Dockerfile's `runtime` stage.
buildah "${STORAGE[@]}" config \
  --user 1000:1000 --workingdir /tmp \
  --env PATH=/opt/atelier/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  --env HOME=/tmp --env TMPDIR=/tmp --env XDG_CACHE_HOME=/tmp/.cache \
  --env HF_HOME=/var/lib/atelier/huggingface --env TORCHINDUCTOR_CACHE_DIR=/var/lib/atelier/torchinductor \
  --env TRITON_CACHE_DIR=/var/lib/atelier/triton --env MPLCONFIGDIR=/tmp/.matplotlib --env RAY_TMPDIR=/tmp/ray \
  --env ATELIER_HOME=/var/lib/atelier --env PYTHONDONTWRITEBYTECODE=1 --env PYTHONUNBUFFERED=1 \
  --env ATELIER_RAY_VERSION="$RAY_VERSION" \
  --entrypoint '["/usr/bin/tini", "--"]' --cmd '["atelier", "--help"]' \
  "$ctr"
buildah "${STORAGE[@]}" commit --quiet "$ctr" "$IMAGE"
echo "== smoke test in the image (buildah run, chroot isolation)"
buildah "${STORAGE[@]}" run --isolation chroot "$ctr" -- atelier --help >/dev/null
buildah "${STORAGE[@]}" run --isolation chroot "$ctr" -- python -m control_plane --help >/dev/null
buildah "${STORAGE[@]}" rm "$ctr" >/dev/null
buildah "${STORAGE[@]}" push --quiet "$IMAGE" "oci-archive:$OUT/atelier-cpu.oci.tar:$IMAGE"
buildah "${STORAGE[@]}" images "$IMAGE"
ls -l "$OUT/atelier-cpu.oci.tar"
