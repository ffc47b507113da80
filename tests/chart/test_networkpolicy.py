"""templates/networkpolicy.yaml: ingress to Ray pods and the control plane is what atelier needs, no more."""

from __future__ import annotations

from typing import Any

from ._chart import FULLNAME, load_values, merged, render


def _policy(values: dict[str, Any], name: str) -> dict[str, Any]:
    return render(values).one("NetworkPolicy", name)["spec"]


def _rule_for_port(policy: dict[str, Any], port: int) -> dict[str, Any]:
    (rule,) = [r for r in policy["ingress"] if any(p["port"] == port for p in r.get("ports", []))]
    return rule


def test_ray_pods_talk_to_each_other_on_any_port(minimal: dict[str, Any]) -> None:
    policy = _policy(minimal, f"{FULLNAME}-ray")

    (cluster_rule,) = [r for r in policy["ingress"] if "ports" not in r]
    assert cluster_rule["from"] == [{"podSelector": policy["podSelector"]}]
    expressions = policy["podSelector"]["matchExpressions"]
    assert expressions == [
        {"key": "app.kubernetes.io/component", "operator": "In", "values": ["ray-head", "ray-worker"]}
    ]


def test_serve_grpc_is_open_to_the_namespace_by_default_and_to_the_listed_clients_otherwise(
    minimal: dict[str, Any],
) -> None:
    assert _rule_for_port(_policy(minimal, f"{FULLNAME}-ray"), 9000)["from"] == [{"podSelector": {}}]

    external = load_values("external-database")
    rule = _rule_for_port(_policy(external, f"{FULLNAME}-ray"), 9000)
    assert rule["from"] == external["networkPolicy"]["serveClients"]


def test_the_kuberay_operator_reaches_the_dashboard_and_the_proxy_health_checks(minimal: dict[str, Any]) -> None:
    rule = _rule_for_port(_policy(minimal, f"{FULLNAME}-ray"), 8265)

    assert {p["port"] for p in rule["ports"]} == {8265, 52365, 8000}
    assert rule["from"][0]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "kuberay-operator"}}


def test_the_control_plane_takes_grpc_from_the_gateway_and_the_jobs(minimal: dict[str, Any]) -> None:
    release = render(minimal)
    policy = release.one("NetworkPolicy", f"{FULLNAME}-control-plane")["spec"]
    sources = _rule_for_port(policy, 50051)["from"]

    ray_selector = release.one("NetworkPolicy", f"{FULLNAME}-ray")["spec"]["podSelector"]
    assert {"podSelector": ray_selector} in sources
    assert sources[1]["podSelector"]["matchExpressions"][0]["values"] == ["sweeper", "training-export", "migrations"]
    assert policy["podSelector"]["matchLabels"].items() <= (
        release.one("Deployment")["spec"]["template"]["metadata"]["labels"].items()
    )


def test_metrics_are_open_to_the_scrapers_only(minimal: dict[str, Any]) -> None:
    release = render(minimal)
    scrapers = minimal.get("networkPolicy", {}).get("metricsScrapers") or [
        {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}
    ]

    assert _rule_for_port(release.one("NetworkPolicy", f"{FULLNAME}-ray")["spec"], 8080)["from"] == scrapers
    assert _rule_for_port(release.one("NetworkPolicy", f"{FULLNAME}-control-plane")["spec"], 9101)["from"] == scrapers


def test_extra_control_plane_clients_are_admitted() -> None:
    external = load_values("external-database")
    sources = _rule_for_port(_policy(external, f"{FULLNAME}-control-plane"), 50051)["from"]

    assert external["networkPolicy"]["controlPlaneClients"][0] in sources


def test_no_policy_when_disabled(minimal: dict[str, Any]) -> None:
    assert render(merged(minimal, {"networkPolicy": {"enabled": False}})).of_kind("NetworkPolicy") == []
