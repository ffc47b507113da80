"""deploy/docker/Dockerfile: the image every pod of the chart runs."""

from __future__ import annotations

import re

import yaml

from ._chart import CHART_DIR, REPO

DOCKERFILE = REPO / "deploy" / "docker" / "Dockerfile"


def _arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    return value


def test_installs_the_ray_version_the_chart_declares_to_kuberay() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())

    assert _arg("RAY_VERSION") == values["ray"]["version"]


def test_installs_the_torch_version_make_setup_pins() -> None:
    makefile = (REPO / "Makefile").read_text()

    assert f"torch=={_arg('TORCH_VERSION')}" in makefile


def test_has_a_gpu_and_a_cpu_target_that_run_as_the_charts_user() -> None:
    text = DOCKERFILE.read_text()
    targets = re.findall(r"^FROM \S+ AS (cpu|gpu)$", text, flags=re.MULTILINE)

    assert sorted(targets) == ["cpu", "gpu"]
    # Both final stages end as uid/gid 1000, the chart's podSecurityContext.runAsUser/runAsGroup.
    for target in ("cpu", "gpu"):
        stage = text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]
        assert "USER 1000:1000" in stage, target


def test_holds_what_kuberay_runs_in_ray_containers() -> None:
    install = re.search(r"apt-get install[^\n]*", DOCKERFILE.read_text())

    assert install is not None
    assert {"bash", "wget", "grep"} <= set(install.group(0).split())


def _runtime_env() -> dict[str, str]:
    stage = DOCKERFILE.read_text().split(" AS runtime\n", 1)[1].split("\nFROM ", 1)[0]
    (block,) = re.findall(r"^ENV (.*?)(?:\n(?! )|\Z)", stage, flags=re.MULTILINE | re.DOTALL)
    pairs = re.findall(r"(\w+)=(\S+)", block.replace("\\\n", " "))
    return {name: value.replace("${RAY_VERSION}", _arg("RAY_VERSION")) for name, value in pairs}


def test_puts_every_runtime_write_under_the_volumes_the_chart_mounts() -> None:
    env = _runtime_env()

    for name in ("HOME", "TMPDIR", "XDG_CACHE_HOME", "HF_HOME", "TORCHINDUCTOR_CACHE_DIR", "RAY_TMPDIR"):
        assert env[name].startswith(("/tmp", "/var/lib/atelier")), name


def test_the_engine_free_build_sets_the_same_runtime_environment() -> None:
    script = (REPO / "deploy" / "docker" / "build-rootfs.sh").read_text()
    scripted = dict(re.findall(r"--env (\w+)=\"?([^\s\"]+)\"?", script))
    scripted["ATELIER_RAY_VERSION"] = scripted["ATELIER_RAY_VERSION"].replace("$RAY_VERSION", _arg("RAY_VERSION"))

    dockerfile = _runtime_env()
    # PATH: the Dockerfile prepends to the base image's; the script spells the whole of it.
    assert scripted.pop("PATH").startswith(dockerfile.pop("PATH").split(":")[0] + ":")
    assert scripted == dockerfile
