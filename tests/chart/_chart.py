"""Renders the chart offline with Helm's Go SDK (helm-python-sdk) and finds manifests in the result."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "deploy" / "helm" / "atelier"
CI_VALUES = sorted((CHART_DIR / "ci").glob("*-values.yaml"))
RELEASE = "demo"
NAMESPACE = "atelier"
FULLNAME = f"{RELEASE}-atelier"
# Kinds whose schemas kubernetes-validate ships; the others are custom resources checked in _crds.py.
CUSTOM_KINDS = {"RayService", "ServiceMonitor", "PodMonitor", "PrometheusRule"}


def load_values(name: str) -> dict[str, Any]:
    """The values of `ci/<name>-values.yaml`."""
    return yaml.safe_load((CHART_DIR / "ci" / f"{name}-values.yaml").read_text())


def merged(base: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `overrides` merged in as Helm merges values files: maps merge, lists are replaced."""
    result = copy.deepcopy(dict(base))
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = merged(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


@dataclass(frozen=True)
class Release:
    """What `helm install` would apply, hooks included, plus the NOTES."""

    manifests: tuple[dict[str, Any], ...]
    sources: tuple[str, ...]
    notes: str

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.manifests if m["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        """The only manifest of `kind` (named `name`, if given); fails listing what there is."""
        found = [m for m in self.of_kind(kind) if name is None or m["metadata"]["name"] == name]
        if len(found) != 1:
            names = [m["metadata"]["name"] for m in self.of_kind(kind)]
            raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)} among {names}")
        return found[0]

    def kinds(self) -> set[str]:
        return {m["kind"] for m in self.manifests}


@functools.lru_cache(maxsize=1)
def _chart() -> helm.Chart:
    return helm.Chart.load(CHART_DIR)


@functools.lru_cache(maxsize=64)
def _render(values_json: str) -> Release:
    rendered = _chart().render(json.loads(values_json), name=RELEASE, namespace=NAMESPACE, is_install=True)
    manifests: list[dict[str, Any]] = []
    sources: list[str] = []
    notes = ""
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for document in yaml.safe_load_all(text):
            if document:
                manifests.append(document)
                sources.append(path)
    return Release(tuple(manifests), tuple(sources), notes)


def render(values: Mapping[str, Any]) -> Release:
    """Renders the chart with `values` (on top of values.yaml), as release `demo` in `atelier`.

    The result is shared between callers: copy a manifest before changing it.
    """
    return _render(json.dumps(values, sort_keys=True))


def lint(values: Mapping[str, Any]) -> dict[str, Any]:
    """`helm lint --strict` of the chart with `values`."""
    return helm.lint(CHART_DIR, dict(values), strict=True)


def pod_specs(manifest: Mapping[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec a manifest creates, with where it sits: workloads, jobs and Ray groups."""
    kind = manifest["kind"]
    spec = manifest.get("spec", {})
    if kind in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        yield kind, spec["template"]["spec"]
    elif kind == "CronJob":
        yield kind, spec["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "RayService":
        cluster = spec["rayClusterConfig"]
        yield "headGroupSpec", cluster["headGroupSpec"]["template"]["spec"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"workerGroupSpecs[{group['groupName']}]", group["template"]["spec"]


def serve_config(release: Release) -> dict[str, Any]:
    """The RayService's serveConfigV2, parsed."""
    return yaml.safe_load(release.one("RayService")["spec"]["serveConfigV2"])


def worker_groups(release: Release) -> dict[str, dict[str, Any]]:
    """The RayService's worker groups by name."""
    groups = release.one("RayService")["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    return {group["groupName"]: group for group in groups}


def serve_deployments(release: Release) -> dict[str, dict[str, Any]]:
    """The atelier application's Serve deployment options by deployment name."""
    (application,) = serve_config(release)["applications"]
    return {deployment["name"]: deployment for deployment in application["deployments"]}
