"""templates/validate.yaml (_validations.tpl): values that cannot work fail to render, with a message that
names the setting; values that can work but will disappoint get a warning in the NOTES."""

from __future__ import annotations

from typing import Any

import pytest
from helm_python import HelmRenderError

from ._chart import load_values, render


def _with_pool(values: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**values, "gpuPools": [{**values["gpuPools"][0], **changes}]}


def test_refuses_a_pool_whose_min_workers_exceed_its_max_workers(minimal: dict[str, Any]) -> None:
    with pytest.raises(HelmRenderError, match=r"gpuPools\[l4\]: minWorkers \(3\) is above maxWorkers \(2\)"):
        render(_with_pool(minimal, minWorkers=3, maxWorkers=2))


def test_refuses_two_pools_with_the_same_name(minimal: dict[str, Any]) -> None:
    values = {**minimal, "gpuPools": [minimal["gpuPools"][0], minimal["gpuPools"][0]]}

    with pytest.raises(HelmRenderError, match=r'gpuPools: the name "l4" is used twice'):
        render(values)


def test_refuses_a_replica_that_needs_more_gpus_than_a_worker_has(minimal: dict[str, Any]) -> None:
    with pytest.raises(HelmRenderError, match=r"gpuPools\[l4\]: gpusPerReplica \(2\) is above gpusPerWorker \(1\)"):
        render(_with_pool(minimal, gpusPerWorker=1, gpusPerReplica=2))


def test_refuses_two_models_with_the_same_name(minimal: dict[str, Any]) -> None:
    values = {**minimal, "models": [minimal["models"][0], minimal["models"][0]]}

    with pytest.raises(HelmRenderError, match=r'models: the name "sd15" is used twice'):
        render(values)


@pytest.mark.parametrize("fullname", ["Atelier", "atelier_prod", "1atelier"])
def test_refuses_resource_names_that_are_not_lowercase_dns_labels(minimal: dict[str, Any], fullname: str) -> None:
    with pytest.raises(HelmRenderError, match=rf'resource names would start with "{fullname}"'):
        render({**minimal, "fullnameOverride": fullname})


def test_warns_when_a_pools_models_can_ask_for_more_replicas_than_it_holds() -> None:
    # h100: sdxl up to 16 replicas and sdxl-turbo 2, on 2 workers of 8 GPUs at 1 GPU per replica.
    notes = render(load_values("three-pools")).notes

    assert "WARNING: the models on pool h100 (sdxl, sdxl-turbo) can ask for 18 replicas" in notes
    assert "pool a100" not in notes.split("WARNING", 1)[1]


def test_gives_no_capacity_warning_when_every_pool_holds_its_models(minimal: dict[str, Any]) -> None:
    # sd15 up to 4 replicas on 2 single-GPU workers: too many, then enough.
    assert "can ask for" in render(minimal).notes
    values = {**minimal, "gpuPools": [{**minimal["gpuPools"][0], "maxWorkers": 4}]}

    assert "can ask for" not in render(values).notes
