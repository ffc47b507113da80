"""The control plane runs without Ray, torch or the inference package (DESIGN.md §1)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import control_plane

REPO_ROOT = Path(control_plane.__file__).resolve().parent.parent


def test_control_plane_imports_no_ray_torch_or_inference() -> None:
    program = (
        "import sys, control_plane.entrypoints.server, control_plane.entrypoints.main, control_plane.db;"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'inference', 'diffusers'));"
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == ""
