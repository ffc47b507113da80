"""Fixtures of the chart tests: the ci/*-values.yaml files and promtool."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from ._chart import CI_VALUES, load_values


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
