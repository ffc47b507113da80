"""deploy/helm/atelier/README.md: generated from Chart.yaml and values.yaml (deploy/helm/tools/chart_readme.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from types import ModuleType

import pytest

from ._chart import CHART_DIR, REPO

GENERATOR = REPO / "deploy" / "helm" / "tools" / "chart_readme.py"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_readme", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chart_readme"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_is_what_the_generator_writes_from_the_current_values() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=60, check=False
    )

    assert result.returncode == 0, result.stderr


def test_lists_every_value_with_its_description_type_and_default() -> None:
    readme = (CHART_DIR / "README.md").read_text()

    assert '| `image.digest` | string | `""` | Image digest' in readme
    assert "| `gpuPools[0].gpusPerWorker` | int | `1` | GPUs of each worker pod" in readme
    assert "| `gpuPools` | list | one pool of single-GPU workers | GPU pools:" in readme


def test_the_generator_refuses_an_undocumented_value() -> None:
    values = "image:\n  # -- Documented.\n  repository: atelier\n  tag: ''\n"

    with pytest.raises(ValueError, match=r"no `# --` description for image\.tag"):
        _generator().rows(values)


def test_the_generator_reads_multi_line_descriptions_and_list_items() -> None:
    values = textwrap.dedent(
        """\
        pools:
          - # -- Name of the pool,
            # on two lines.
            name: gpu
            # -- Workers.
            maxWorkers: 4
        """
    )

    rows = _generator().rows(values)

    assert ("pools[0].name", "string", '`"gpu"`', "Name of the pool, on two lines.") in rows
    assert ("pools[0].maxWorkers", "int", "`4`", "Workers.") in rows
