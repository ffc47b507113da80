# One entry point per job; `make setup` is idempotent and every other target depends on it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo up down test test-fast bench protos lint clean

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
	$(BIN)/atelier generate --account demo "a lighthouse at dusk, oil painting" --seed 7 -o out.png
	@echo "The cluster keeps running: 'make down' (or '$(BIN)/atelier down') stops it."

up: setup
	$(BIN)/atelier up

down: setup
	$(BIN)/atelier down

test: setup
	$(BIN)/python -m pytest

# Without the Ray Serve cluster tests.
test-fast: setup
	$(BIN)/python -m pytest -m "not e2e"

bench: setup
	$(BIN)/python benchmarks/serving_overhead.py

# Regenerates the gRPC stubs (and .pyi type stubs) from protos/atelier/v1/*.proto.
protos: setup
	PATH=$(BIN):$$PATH $(BIN)/python -m grpc_tools.protoc -I . \
		--python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
		protos/atelier/v1/*.proto

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy atelier control_plane inference

clean:
	rm -rf $(VENV) build *.egg-info
