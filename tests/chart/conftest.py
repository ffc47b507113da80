"""Fixtures of the chart tests: the ci/*-values.yaml files, promtool and helm."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from ._chart import CI_VALUES, REPO, load_values


@pytest.fixture(params=[path.name.removesuffix("-values.yaml") for path in CI_VALUES])
def ci_values(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The values of each ci/*-values.yaml file in turn."""
    return load_values(request.param)


@pytest.fixture
def minimal() -> dict[str, Any]:
    """ci/minimal-values.yaml: one pool (l4), one model (sd15)."""
    return load_values("minimal")


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool; `make chart-tools` installs it (Debian's prometheus package)."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is not on PATH: run `make chart-tools` (apt-get install prometheus)")
    return path


@pytest.fixture(scope="session")
def helm() -> str:
    """Path of helm 3; `make chart-tools` extracts it into .venv/bin (deploy/helm/tools/install_helm.py)."""
    for candidate in (Path(sys.executable).parent / "helm", REPO / ".venv" / "bin" / "helm"):
        if candidate.is_file():
            return str(candidate)
    path = shutil.which("helm")
    if path is None:
        pytest.fail("helm is not in .venv/bin or on PATH: run `make chart-tools`")
    return path
