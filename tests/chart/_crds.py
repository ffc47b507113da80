"""Checks of rendered manifests against Kubernetes: the built-in kinds against kubernetes-validate's
schemas, the custom resources against the real CustomResourceDefinitions of KubeRay and prometheus-operator
(`../shared/k8s-crds` beside the repository), both strict: a field the API server would drop is an error."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml

from ._chart import REPO, pod_specs

# The oldest Kubernetes the chart admits (Chart.yaml kubeVersion: gRPC probes are GA from 1.27) and the
# newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())

# CI clones the repository with shared/ beside it (see its README).
CRD_DIR = REPO.parent / "shared" / "k8s-crds"
# The oldest KubeRay the chart supports (Chart.yaml annotation) and the newest checked.
KUBERAY_VERSIONS = ("1.3.0", "1.7.0")
CRD_FILES: dict[tuple[str, str], tuple[str, ...]] = {
    ("ray.io/v1", "RayService"): tuple(f"rayservice-v{version}.yaml" for version in KUBERAY_VERSIONS),
    ("monitoring.coreos.com/v1", "ServiceMonitor"): ("servicemonitors.yaml",),
    ("monitoring.coreos.com/v1", "PodMonitor"): ("podmonitors.yaml",),
    ("monitoring.coreos.com/v1", "PrometheusRule"): ("prometheusrules.yaml",),
}


def _closed(node: Any) -> Any:
    """A CRD schema as the API server applies it: objects with listed properties drop (here: reject) others."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    closed = {key: _closed(value) for key, value in node.items()}
    if (
        closed.get("type") == "object"
        and "properties" in closed
        and "additionalProperties" not in closed
        and not closed.get("x-kubernetes-preserve-unknown-fields")
    ):
        closed["additionalProperties"] = False
    return closed


@functools.cache
def crd_validator(file: str) -> jsonschema.Draft7Validator:
    """A validator of the served `v1` version of the CRD in `CRD_DIR/file`."""
    path = CRD_DIR / file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the CRDs are read from ../shared/k8s-crds beside the repository")
    # The CRDs are 16,000 lines: libyaml's loader reads them in a tenth of the pure-Python one's time.
    crd = yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return jsonschema.Draft7Validator(_closed(version["schema"]["openAPIV3Schema"]))


def validate_builtin(manifest: Mapping[str, Any]) -> None:
    """Validates a built-in kind against the Kubernetes OpenAPI schemas, unknown fields included.

    Raises:
        kubernetes_validate.ValidationError: the manifest breaks the schema.
    """
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(dict(manifest), version, strict=True)


def validate_against_crd(manifest: Mapping[str, Any], file: str) -> None:
    """Validates a custom resource against one CRD file (e.g. `rayservice-v1.3.0.yaml`).

    Raises:
        jsonschema.ValidationError: a field is unknown to the CRD, missing or malformed.
    """
    error = jsonschema.exceptions.best_match(crd_validator(file).iter_errors(dict(manifest)))
    if error is not None:
        raise error


def validate_custom(manifest: Mapping[str, Any]) -> None:
    """Validates a custom resource against every CRD version the chart supports, and what its operator
    reads beyond the schema (Serve's config, pod templates as core Pods).

    Raises:
        KeyError: a custom resource this module does not know.
        jsonschema.ValidationError: the CRD or the operator would reject or drop part of it.
        kubernetes_validate.ValidationError: a pod template or the serve Service is not valid Kubernetes.
    """
    for file in CRD_FILES[(manifest["apiVersion"], manifest["kind"])]:
        validate_against_crd(manifest, file)
    if manifest["kind"] == "RayService":
        _validate_ray_service(manifest)


def _validate_ray_service(manifest: Mapping[str, Any]) -> None:
    spec = manifest["spec"]
    serve = yaml.safe_load(spec["serveConfigV2"])
    if not isinstance(serve, dict) or not serve.get("applications"):
        raise jsonschema.ValidationError("serveConfigV2 must be a YAML mapping with `applications`")
    for group in spec["rayClusterConfig"].get("workerGroupSpecs", []):
        if not group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]:
            raise jsonschema.ValidationError(f"worker group {group['groupName']}: replicas outside min..max")
    # The pod templates and the serve Service KubeRay builds from them are core objects: check them as such.
    namespace = manifest["metadata"].get("namespace", "default")
    for where, pod_spec in pod_specs(manifest):
        validate_builtin(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": where.lower().replace("[", "-").rstrip("]"), "namespace": namespace},
                "spec": pod_spec,
            }
        )
    if "serveService" in spec:
        service = dict(spec["serveService"])
        validate_builtin(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "serve-svc", **service.get("metadata", {})},
                "spec": service["spec"],
            }
        )
