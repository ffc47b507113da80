"""`atelier models build` refuses what it cannot build before loading anything, naming the setting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from atelier.cli import main


@pytest.fixture()
def serve_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"models": [{"name": "tiny-sd"}, {"name": "sdxl", "source": "tiny-sdxl"}]}))
    monkeypatch.setenv("ATELIER_SERVE_CONFIG", str(path))
    monkeypatch.setenv("ATELIER_HOME", str(tmp_path / "home"))
    return path


def test_an_unknown_model_is_refused_with_the_models_of_the_config(
    serve_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "build", "--model", "sd15", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert "'sd15'" in error["message"] and "tiny-sd, sdxl" in error["message"]


def test_an_unknown_backend_is_refused_with_the_valid_names(
    serve_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "build", "--backend", "turbo", "--json"]) == 1
    error = json.loads(capsys.readouterr().out)["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "onnxruntime" in error["message"]
    assert not (serve_config.parent / "home").exists(), "nothing was loaded or built"
