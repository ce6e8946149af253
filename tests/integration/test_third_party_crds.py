"""The KServe, Gateway API and Istio objects Steward creates, served by a real API server from the pinned upstream
CRDs: they round-trip unchanged, take status through its subresource, and out-of-range traffic settings are
refused."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest

from steward_harness import upstream
from steward_harness.kubectl import Kubectl

_MANAGER = "--field-manager=steward"

Manifest = dict[str, Any]
# Builds one example object for a namespace.
Example = Callable[[str], Manifest]


@pytest.fixture(scope="module")
def cluster(kubectl: Kubectl) -> Kubectl:
    """kubectl against the control plane once the third-party CRDs are served."""
    kubectl.install_crds(upstream.crds())
    return kubectl


def _labels(version: str) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "steward", "steward.dev/model": "churn", "steward.dev/version": version}


def custom_container_service(namespace: str) -> Manifest:
    """The challenger's predictor: Steward's own model server in a custom container."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "churn-2024-07-01", "labels": _labels("2024-07-01")},
        "spec": {
            "predictor": {
                "minReplicas": 1,
                "maxReplicas": 3,
                "serviceAccountName": "churn-predictor",
                "containers": [
                    {
                        "name": "kserve-container",
                        "image": "registry.example.com/steward/predictor:0.1.0",
                        "args": ["--model_name=churn", "--model_dir=/mnt/models", "--http_port=8080"],
                        "env": [{"name": "STORAGE_URI", "value": "s3://models/churn/2024-07-01/"}],
                        "ports": [{"containerPort": 8080, "name": "h2c", "protocol": "TCP"}],
                        "readinessProbe": {"httpGet": {"path": "/v2/models/churn/ready", "port": 8080}},
                        "resources": {
                            "requests": {"cpu": "500m", "memory": "512Mi"},
                            "limits": {"cpu": "1", "memory": "1Gi"},
                        },
                    }
                ],
            }
        },
    }


def runtime_service(namespace: str) -> Manifest:
    """The same model served by a scikit-learn serving runtime, through the typed model fields."""
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {"name": "churn-2024-06-01", "labels": _labels("2024-06-01")},
        "spec": {
            "predictor": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "canaryTrafficPercent": 10,
                "model": {
                    "modelFormat": {"name": "sklearn", "version": "1"},
                    "storageUri": "s3://models/churn/2024-06-01/",
                    "protocolVersion": "v2",
                    "runtime": "kserve-sklearnserver",
                    "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}},
                    "env": [{"name": "STEWARD_MODEL_VERSION", "value": "2024-06-01"}],
                },
            }
        },
    }


def http_route(namespace: str) -> Manifest:
    """A canary at 10 percent, with a quarter of all requests mirrored to a shadow."""
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "churn", "labels": _labels("2024-07-01")},
        "spec": {
            "parentRefs": [
                {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "namespace": "gateways",
                    "name": "models",
                    "sectionName": "http",
                }
            ],
            "hostnames": ["churn.models.example.com"],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [
                        {
                            "group": "",
                            "kind": "Service",
                            "name": "churn-2024-06-01-predictor",
                            "port": 80,
                            "weight": 90,
                        },
                        {
                            "kind": "Service",
                            "name": "churn-2024-07-01-predictor",
                            "namespace": namespace,
                            "port": 80,
                            "weight": 10,
                        },
                    ],
                    "filters": [
                        {
                            "type": "RequestMirror",
                            "requestMirror": {
                                "backendRef": {"kind": "Service", "name": "churn-2024-08-01-predictor", "port": 80},
                                "percent": 25,
                            },
                        }
                    ],
                }
            ],
        },
    }


def virtual_service(namespace: str) -> Manifest:
    """The same canary and shadow, as Istio routes it."""
    host = f"svc.{namespace}.svc.cluster.local"
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "churn", "labels": _labels("2024-07-01")},
        "spec": {
            "hosts": ["churn.models.example.com"],
            "gateways": ["gateways/models", "mesh"],
            "http": [
                {
                    "name": "churn",
                    "match": [{"uri": {"prefix": "/"}}],
                    "route": [
                        {
                            "destination": {"host": f"churn-2024-06-01-predictor.{host}", "port": {"number": 80}},
                            "weight": 90,
                        },
                        {
                            "destination": {
                                "host": f"churn-2024-07-01-predictor.{host}",
                                "subset": "challenger",
                                "port": {"number": 80},
                            },
                            "weight": 10,
                        },
                    ],
                    "mirror": {"host": f"churn-2024-08-01-predictor.{host}", "port": {"number": 80}},
                    "mirrorPercentage": {"value": 12.5},
                    "timeout": "30s",
                    "retries": {"attempts": 2, "perTryTimeout": "10s", "retryOn": "5xx,connect-failure"},
                }
            ],
        },
    }


# What the controller behind each kind would report once the object is served.
STATUSES: dict[str, Manifest] = {
    "InferenceService": {
        "url": "http://churn-2024-07-01.example.com",
        "address": {"url": "http://churn-2024-07-01-predictor.models.svc.cluster.local"},
        "conditions": [
            {"type": "PredictorReady", "status": "True", "lastTransitionTime": "2024-07-01T09:00:00Z"},
            {
                "type": "Ready",
                "status": "True",
                "reason": "Served",
                "message": "the predictor answers",
                "lastTransitionTime": "2024-07-01T09:00:00Z",
                "severity": "",
            },
        ],
        "components": {"predictor": {"latestReadyRevision": "churn-2024-07-01-predictor-00001"}},
        "observedGeneration": 1,
        "modelStatus": {
            "states": {"activeModelState": "Loaded", "targetModelState": ""},
            "transitionStatus": "UpToDate",
        },
    },
    "HTTPRoute": {
        "parents": [
            {
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "models"},
                "controllerName": "example.com/gateway-controller",
                "conditions": [
                    {
                        "type": "Accepted",
                        "status": "True",
                        "reason": "Accepted",
                        "message": "",
                        "lastTransitionTime": "2024-07-01T09:00:00Z",
                    }
                ],
            }
        ]
    },
    "VirtualService": {"observedGeneration": 1, "conditions": [{"type": "Reconciled", "status": "True"}]},
}

EXAMPLES: list[Example] = [custom_container_service, runtime_service, http_route, virtual_service]


def _apply(kubectl: Kubectl, namespace: str, manifest: Manifest, check: bool = True) -> str:
    result = kubectl.run(
        "apply", "--server-side", _MANAGER, "-n", namespace, "-f", "-", stdin=json.dumps(manifest), check=check
    )
    assert check or result.returncode != 0, "the API server accepted it"
    return result.stdout + result.stderr


def _get(kubectl: Kubectl, namespace: str, manifest: Manifest) -> Manifest:
    resource = f"{manifest['kind'].lower()}.{manifest['apiVersion'].split('/')[0]}"
    return kubectl.json("get", resource, manifest["metadata"]["name"], "-n", namespace)  # type: ignore[no-any-return]


def _with(manifest: Manifest, path: str, value: Any) -> Manifest:
    """A copy of `manifest` with the field at a dotted path (list indices as numbers) set to `value`."""
    changed = copy.deepcopy(manifest)
    *parents, last = [int(key) if key.isdigit() else key for key in path.split(".")]
    node: Any = changed
    for key in parents:
        node = node[key]
    node[last] = value
    return changed


class TestDefinitions:
    def test_kubectl_explains_the_fields_steward_writes(self, cluster: Kubectl) -> None:
        mirror = " ".join(cluster.run("explain", "httproute.spec.rules.filters.requestMirror.percent").stdout.split())
        assert "percentage of requests that should be mirrored" in mirror
        weight = " ".join(cluster.run("explain", "virtualservice.spec.http.route.weight").stdout.split())
        assert "relative proportion of traffic" in weight


# The fields each kind's schema defaults, by example: the only difference a stored object may show. Steward applies
# server-side, so a defaulted field is never seen as drift.
DEFAULTED: dict[str, dict[str, Any]] = {
    "http_route": {"spec.rules.0.backendRefs.1.group": "", "spec.rules.0.filters.0.requestMirror.backendRef.group": ""},
}


def _as_stored(example: Example, manifest: Manifest) -> Manifest:
    """`manifest` as the API server stores it: with the schema's defaults filled in."""
    for path, value in DEFAULTED.get(example.__name__, {}).items():
        manifest = _with(manifest, path, value)
    return manifest


class TestRoundTrip:
    @pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.__name__)
    def test_an_applied_object_reads_back_with_only_the_schema_defaults(
        self, cluster: Kubectl, namespace: str, example: Example
    ) -> None:
        manifest = example(namespace)
        _apply(cluster, namespace, manifest)
        stored = _get(cluster, namespace, manifest)
        assert stored["spec"] == _as_stored(example, manifest)["spec"]
        assert stored["metadata"]["labels"] == manifest["metadata"]["labels"]
        assert "status" not in stored


class TestStatus:
    @pytest.mark.parametrize("example", EXAMPLES, ids=lambda example: example.__name__)
    def test_status_is_written_only_through_its_subresource(
        self, cluster: Kubectl, namespace: str, example: Example
    ) -> None:
        manifest = example(namespace)
        _apply(cluster, namespace, manifest)
        status = STATUSES[manifest["kind"]]
        resource = f"{manifest['kind'].lower()}.{manifest['apiVersion'].split('/')[0]}"
        name = manifest["metadata"]["name"]
        patch = json.dumps({"status": status})

        cluster.run("patch", resource, name, "-n", namespace, "--type=merge", "-p", patch)
        assert "status" not in _get(cluster, namespace, manifest)

        cluster.run("patch", resource, name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch)
        stored = _get(cluster, namespace, manifest)
        assert stored["status"] == status
        assert stored["spec"] == _as_stored(example, manifest)["spec"]

    def test_an_inference_service_shows_its_url_and_readiness(self, cluster: Kubectl, namespace: str) -> None:
        manifest = custom_container_service(namespace)
        _apply(cluster, namespace, manifest)
        patch = json.dumps({"status": STATUSES["InferenceService"]})
        cluster.run(
            "patch", "isvc", "churn-2024-07-01", "-n", namespace, "--subresource=status", "--type=merge", "-p", patch
        )
        table = cluster.run("get", "isvc", "-n", namespace).stdout.splitlines()
        assert table[0].split()[:3] == ["NAME", "URL", "READY"]
        assert table[1].split()[:3] == ["churn-2024-07-01", "http://churn-2024-07-01.example.com", "True"]


class Change(NamedTuple):
    """One field of an example set to a value the API server must refuse, and the words of its refusal."""

    example: Example
    path: str
    value: Any
    message: str

    def field(self) -> str:
        """The field as the API server names it: spec.rules[0].backendRefs[1].weight."""
        return ".".join(f"[{key}]" if key.isdigit() else key for key in self.path.split(".")).replace(".[", "[")


OUT_OF_RANGE = [
    pytest.param(
        Change(http_route, "spec.rules.0.backendRefs.1.weight", 1_000_001, "should be less than or equal to 1000000"),
        id="httproute-weight-above-1000000",
    ),
    pytest.param(
        Change(http_route, "spec.rules.0.backendRefs.0.weight", -1, "should be greater than or equal to 0"),
        id="httproute-weight-negative",
    ),
    pytest.param(
        Change(http_route, "spec.rules.0.filters.0.requestMirror.percent", 101, "should be less than or equal to 100"),
        id="httproute-mirror-percent-above-100",
    ),
]

INCONSISTENT = [
    pytest.param(
        Change(
            http_route,
            "spec.rules.0.filters.0.requestMirror.fraction",
            {"numerator": 1, "denominator": 8},
            "Only one of percent or fraction may be specified",
        ),
        id="mirror-percent-and-fraction",
    ),
    pytest.param(
        Change(
            http_route,
            "spec.rules.0.filters.0.type",
            "URLRewrite",
            "filter.requestMirror must be nil if the filter.type",
        ),
        id="mirror-settings-on-another-filter",
    ),
    pytest.param(
        Change(http_route, "spec.rules.0.filters.0.type", "Mirror", 'Unsupported value: "Mirror"'),
        id="filter-type-unknown",
    ),
    pytest.param(
        Change(virtual_service, "spec.http.0.timeout", "soon", "must be a valid duration"),
        id="timeout-not-a-duration",
    ),
]


class TestRefused:
    @pytest.mark.parametrize("change", OUT_OF_RANGE)
    def test_a_weight_out_of_range(self, cluster: Kubectl, namespace: str, change: Change) -> None:
        manifest = _with(change.example(namespace), change.path, change.value)
        error = _apply(cluster, namespace, manifest, check=False)
        assert change.field() in error
        assert change.message in error

    @pytest.mark.parametrize("change", INCONSISTENT)
    def test_an_inconsistent_setting(self, cluster: Kubectl, namespace: str, change: Change) -> None:
        manifest = _with(change.example(namespace), change.path, change.value)
        error = _apply(cluster, namespace, manifest, check=False)
        assert change.message in error
