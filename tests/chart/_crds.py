"""Checks of rendered manifests against Kubernetes: the built-in kinds against kubernetes-validate's
schemas (strict: unknown fields are errors), the custom resources against the fields KubeRay and
prometheus-operator require (their CRD schemas are not in kubernetes-validate)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml

from ._chart import pod_specs

# The oldest Kubernetes the chart admits (Chart.yaml kubeVersion: gRPC probes are GA from 1.27) and the
# newest kubernetes-validate knows.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.utils.latest_version())

_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SELECTOR = {
    "type": "object",
    "properties": {"matchLabels": _STRING_MAP, "matchExpressions": {"type": "array"}},
    "anyOf": [{"required": ["matchLabels"]}, {"required": ["matchExpressions"]}],
}


def _resource(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "metadata": {
                "type": "object",
                "required": ["name"],
                "properties": {"labels": _STRING_MAP, "annotations": _STRING_MAP},
            },
            "spec": spec,
        },
    }


_POD_TEMPLATE = {
    "type": "object",
    "required": ["spec"],
    "properties": {
        "spec": {
            "type": "object",
            "required": ["containers"],
            "properties": {"containers": {"type": "array", "minItems": 1}},
        }
    },
}

# What KubeRay's RayService (ray.io/v1) needs to build the cluster and deploy Serve.
_RAY_SERVICE = _resource(
    {
        "type": "object",
        "required": ["serveConfigV2", "rayClusterConfig"],
        "properties": {
            "serveConfigV2": {"type": "string", "minLength": 1},
            "upgradeStrategy": {
                "type": "object",
                "properties": {"type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]}},
            },
            "excludeHeadPodFromServeSvc": {"type": "boolean"},
            "serveService": {"type": "object"},
            "rayClusterConfig": {
                "type": "object",
                "required": ["headGroupSpec"],
                "properties": {
                    "rayVersion": {"type": "string"},
                    "enableInTreeAutoscaling": {"type": "boolean"},
                    "autoscalerOptions": {"type": "object"},
                    "headGroupSpec": {
                        "type": "object",
                        "required": ["rayStartParams", "template"],
                        "properties": {"rayStartParams": _STRING_MAP, "template": _POD_TEMPLATE},
                    },
                    "workerGroupSpecs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": [
                                "groupName",
                                "replicas",
                                "minReplicas",
                                "maxReplicas",
                                "rayStartParams",
                                "template",
                            ],
                            "properties": {
                                "groupName": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
                                "replicas": {"type": "integer", "minimum": 0},
                                "minReplicas": {"type": "integer", "minimum": 0},
                                "maxReplicas": {"type": "integer", "minimum": 1},
                                "rayStartParams": _STRING_MAP,
                                "template": _POD_TEMPLATE,
                            },
                        },
                    },
                },
            },
        },
    }
)

_SERVICE_MONITOR = _resource(
    {
        "type": "object",
        "required": ["selector", "endpoints"],
        "properties": {
            "selector": _SELECTOR,
            "namespaceSelector": {"type": "object"},
            "endpoints": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "anyOf": [{"required": ["port"]}, {"required": ["targetPort"]}]},
            },
        },
    }
)

_POD_MONITOR = _resource(
    {
        "type": "object",
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "selector": _SELECTOR,
            "namespaceSelector": {"type": "object"},
            "podMetricsEndpoints": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["port"]}},
        },
    }
)

# prometheus-operator's Rule type: exactly these fields, label and annotation values are strings.
_PROMETHEUS_RULE = _resource(
    {
        "type": "object",
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "interval": {"type": "string"},
                        "rules": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["expr"],
                                "oneOf": [{"required": ["record"]}, {"required": ["alert"]}],
                                "properties": {
                                    "record": {"type": "string"},
                                    "alert": {"type": "string"},
                                    "expr": {"type": "string", "minLength": 1},
                                    "for": {"type": "string"},
                                    "labels": _STRING_MAP,
                                    "annotations": _STRING_MAP,
                                },
                            },
                        },
                    },
                },
            }
        },
    }
)

CUSTOM_RESOURCE_SCHEMAS = {
    ("ray.io/v1", "RayService"): _RAY_SERVICE,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _SERVICE_MONITOR,
    ("monitoring.coreos.com/v1", "PodMonitor"): _POD_MONITOR,
    ("monitoring.coreos.com/v1", "PrometheusRule"): _PROMETHEUS_RULE,
}


def validate_builtin(manifest: Mapping[str, Any]) -> None:
    """Validates a built-in kind against the Kubernetes OpenAPI schemas, unknown fields included.

    Raises:
        kubernetes_validate.ValidationError: the manifest breaks the schema.
    """
    for version in KUBERNETES_VERSIONS:
        kubernetes_validate.validate(dict(manifest), version, strict=True)


def validate_custom(manifest: Mapping[str, Any]) -> None:
    """Validates a custom resource against the fields its operator requires.

    Raises:
        KeyError: a custom resource this module does not know.
        jsonschema.ValidationError: a required field is missing or malformed.
    """
    schema = CUSTOM_RESOURCE_SCHEMAS[(manifest["apiVersion"], manifest["kind"])]
    jsonschema.Draft7Validator(schema).validate(manifest)
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
