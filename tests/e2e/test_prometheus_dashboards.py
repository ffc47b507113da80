"""A real Prometheus scrapes the session cluster: every shipped panel and rule evaluates against it.

Prometheus (Debian's `prometheus` package, `make chart-tools`) listens on 127.0.0.1 only, scrapes the
control plane's /metrics and the Ray head's metrics port every second and loads the chart's rendered
PrometheusRule, so the recording rules the dashboards join on exist. After mixed traffic (successful
generations, a moderation block, a bad request), each dashboard panel whose metrics that traffic moves
must return at least one finite value, and each rule expression must evaluate without error.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest
import yaml

from atelier.ports import free_port
from atelier.state import ClusterState
from protos.atelier.v1 import inference_pb2
from tests.chart._chart import CHART_DIR, load_values, merged, render

DASHBOARDS = CHART_DIR / "files" / "dashboards"
# The local cluster's only model (inference/config.py); the rules are rendered for it.
LOCAL_MODEL = "tiny-sd"
# Wide enough to cover the whole test's traffic: Grafana's $__rate_interval is at least four scrapes.
RATE_INTERVAL = "5m"

# Panels that are empty under this traffic, by dashboard file and title, and why.
EXPECTED_EMPTY = {
    # NVIDIA's dcgm-exporter (monitoring.dcgmExporter) exports these on GPU nodes only; this cluster runs on
    # CPUs and no exporter is scraped. tests/chart/test_grafana_dashboards.py evaluates them with promtool on
    # the series dcgm-exporter and a replica's pod export, and tests/chart/test_servicemonitor.py the scrape.
    ("inference.json", "GPU utilisation (DCGM)"),
    ("inference.json", "GPU memory used (DCGM)"),
    ("inference.json", "GPU memory used share (DCGM)"),
}

# One counter each process moves on every generation.
MOVED_BY_EACH_PROCESS = (
    "ray_atelier_inference_images_generated_total",  # the Gateway
    "ray_atelier_inference_batch_size_count",  # the DiffusionModel replica
    "atelier_control_plane_rpc_duration_seconds_count",  # the control plane
    "ray_atelier_inference_replica_busy_seconds_total",  # the DiffusionModel replica, after its batch ran
)


def _get(url: str, params: dict[str, str] | None = None) -> Any:
    if params:
        url = f"{url}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read().decode())


def _query(prometheus: str, expr: str) -> list[dict[str, Any]]:
    """The instant vector `expr` gives now; fails with Prometheus's error for a bad expression."""
    try:
        body = _get(f"{prometheus}/api/v1/query", {"query": expr})
    except urllib.error.HTTPError as error:
        raise AssertionError(f"{expr}: {error.read().decode()}") from error
    assert body["status"] == "success", (expr, body)
    result = body["data"]["result"]
    return result if body["data"]["resultType"] == "vector" else [{"value": result}]


def _finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(sample["value"][1])) for sample in result)


def _rules(directory: Path) -> tuple[Path, list[dict[str, Any]]]:
    """The chart's PrometheusRule rendered for the local cluster's model, as a Prometheus rule file."""
    values = load_values("minimal")
    (model,) = values["models"]
    values = merged(values, {"models": [merged(model, {"name": LOCAL_MODEL})]})
    groups = render(values).one("PrometheusRule")["spec"]["groups"]
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path, groups


def _wait_until(condition, what: str, timeout_s: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(1)


@pytest.fixture(scope="module")
def prometheus(cluster: ClusterState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a private Prometheus scraping the session cluster every second, with the chart's rules."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.fail("prometheus is not on PATH: run `make chart-tools` (apt-get install prometheus)")
    directory = tmp_path_factory.mktemp("prometheus")
    rules, _ = _rules(directory)
    targets = {"control-plane": cluster.control_plane_metrics_url, "ray": cluster.ray_metrics_url}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [
            {
                "job_name": job,
                "metrics_path": urlsplit(url).path,
                "static_configs": [{"targets": [urlsplit(url).netloc]}],
            }
            for job, url in targets.items()
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config))
    address = f"127.0.0.1:{free_port()}"
    with (directory / "prometheus.log").open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address={address}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://{address}"
    try:

        def up() -> bool:
            assert process.poll() is None, (directory / "prometheus.log").read_text()
            try:
                return len(_query(url, "up == 1")) == len(targets)
            except (urllib.error.URLError, ConnectionError):
                return False

        _wait_until(up, "Prometheus to scrape both targets")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def mixed_traffic(prometheus: str, cluster: ClusterState, inference, operator_metadata) -> str:  # type: ignore[no-untyped-def]
    """Two rounds of successes and errors, the second after Prometheus saw the first: every counter moves."""
    account_id = cluster.demo_account_id
    assert account_id is not None
    ok = inference_pb2.GenerateRequest(account_id=account_id, prompt="a heron", steps=2, seed=1)
    blocked = inference_pb2.GenerateRequest(account_id=account_id, prompt="a gore scene, beheading", steps=2)
    bad = inference_pb2.GenerateRequest(account_id=account_id, prompt="a heron", steps=100_000)

    def round_of_traffic() -> None:
        inference.Generate(ok, metadata=operator_metadata, timeout=120)
        for request in (blocked, bad):
            with pytest.raises(grpc.RpcError):
                inference.Generate(request, metadata=operator_metadata, timeout=120)

    round_of_traffic()
    _wait_until(
        lambda: _query(prometheus, 'ray_atelier_inference_requests_total{code!="OK"}'),
        "the first round's counters in Prometheus",
    )
    round_of_traffic()
    # Each process exports on its own schedule (the gateway and the model replicas through Ray's agent).
    for counter in MOVED_BY_EACH_PROCESS:
        moved = f"increase({counter}[5m]) > 0"
        _wait_until(lambda moved=moved: _query(prometheus, moved), f"{counter} to move in Prometheus")
    # Rates need the moved samples plus one more scrape of the control plane.
    time.sleep(3)
    return prometheus


def _panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression) of every panel target, template variables substituted."""
    substitutions = {"$__rate_interval": RATE_INTERVAL, "$model": ".*", "${model}": ".*"}
    queries = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for variable, value in substitutions.items():
                    expr = expr.replace(variable, value)
                assert "$" not in expr, f"{path.name} / {panel['title']}: unsubstituted variable in {expr}"
                queries.append((path.name, panel["title"], expr))
    return queries


def test_every_dashboard_panel_shows_the_traffic(mixed_traffic: str) -> None:
    empty = set()
    for dashboard, title, expr in _panel_queries():
        if not _finite(_query(mixed_traffic, expr)):
            empty.add((dashboard, title))

    assert empty == EXPECTED_EMPTY, {
        "empty but expected data": empty - EXPECTED_EMPTY,
        "data now": EXPECTED_EMPTY - empty,
    }


def test_refusals_are_counted_by_error_reason_where_they_are_answered(mixed_traffic: str) -> None:
    def reasons(expr: str) -> set[tuple[str, str]]:
        result = _query(mixed_traffic, f"sum by (code, reason) ({expr})")
        return {(sample["metric"]["code"], sample["metric"].get("reason", "")) for sample in result}

    # The blocked prompt: refused by the control plane's moderation, relayed by the gateway with its reason.
    blocked = ("FAILED_PRECONDITION", "PROMPT_BLOCKED")
    assert blocked in reasons("atelier_control_plane_refusals_total")
    # The bad request: the gateway's own INVALID_ARGUMENT, with field violations and no ErrorInfo.
    assert reasons("ray_atelier_inference_refusals_total") >= {blocked, ("INVALID_ARGUMENT", "")}


def test_replica_utilisation_is_a_share_of_wall_time(mixed_traffic: str) -> None:
    busy = _query(mixed_traffic, f"rate(ray_atelier_inference_replica_busy_seconds_total[{RATE_INTERVAL}])")

    assert busy and all(0 < float(sample["value"][1]) <= 1 for sample in busy), busy


def test_every_rule_evaluates_in_prometheus(mixed_traffic: str, tmp_path: Path) -> None:
    _, groups = _rules(tmp_path)
    for group in groups:
        for rule in group["rules"]:
            _query(mixed_traffic, rule["expr"])  # raises on an expression Prometheus rejects

    loaded = _get(f"{mixed_traffic}/api/v1/rules")["data"]["groups"]
    failing = {
        rule["name"]: rule["lastError"] for group in loaded for rule in group["rules"] if rule.get("health") != "ok"
    }
    assert failing == {}
    assert sum(len(group["rules"]) for group in loaded) == sum(len(group["rules"]) for group in groups)
    recorded = {sample["metric"]["deployment"] for sample in _query(mixed_traffic, "atelier:model_pool:info")}
    assert recorded == {f"DiffusionModel-{LOCAL_MODEL}"}


def test_failed_requests_latency_is_recorded_under_their_code(mixed_traffic: str) -> None:
    def codes(expr: str) -> set[str]:
        return {sample["metric"]["code"] for sample in _query(mixed_traffic, f"sum by (code) ({expr})")}

    timed = codes('ray_atelier_inference_request_duration_seconds_count{stage="total"}')

    # Every answered code has a latency, the refused requests' (validation, moderation) included.
    assert timed == codes("ray_atelier_inference_requests_total")
    assert "OK" in timed and len(timed) > 1, timed
