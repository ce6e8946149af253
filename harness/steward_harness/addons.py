"""The add-ons a local node runs, each from its pinned upstream release and installed as its project ships it:
CoreDNS (Service names), KServe's controller (InferenceServices into Deployments and Services) and Traefik (the
Gateway API implementation in front of the predictors)."""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from steward_harness import certificates, images, upstream
from steward_harness.kubectl import Kubectl, KubectlError

Manifest = dict[str, Any]

# The address kubelets hand pods as their name server: by convention the tenth of the service range.
DNS_SERVICE = "kube-dns"
KSERVE_NAMESPACE = "kserve"
TRAEFIK_NAMESPACE = "traefik"
GATEWAY_CLASS = "traefik"
GATEWAY = "kserve-ingress-gateway"
# Traefik's entry point for the Gateway's listener; the two ports must be equal.
GATEWAY_PORT = 8000
TRAEFIK_METRICS_PORT = 9100
READY_TIMEOUT = 180.0
_DNS_PORT = 1053
# What every add-on container runs with: no root, no capability, nothing written to its image.
_RESTRICTED = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "runAsUser": 65532,
    "capabilities": {"drop": ["ALL"]},
}


def dns_address(service_cidr: str) -> str:
    return str(ipaddress.ip_network(service_cidr).network_address + 10)


# -- CoreDNS ---------------------------------------------------------------------------------------------------


def coredns(service_cidr: str) -> list[Manifest]:
    """CoreDNS answering for cluster.local from the API, as kube-dns; nothing is forwarded anywhere else."""
    labels = {"k8s-app": DNS_SERVICE}
    # An unprivileged port: the Service maps 53 to it, so the container needs no capability.
    corefile = f""".:{_DNS_PORT} {{
    errors
    health :8080
    ready :8181
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 30
    loop
    reload
}}
"""
    namespace = "kube-system"
    return [
        _account("coredns", namespace),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["endpoints", "services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
            ],
        },
        _cluster_binding("system:coredns", "system:coredns", "coredns", namespace),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "coredns", "namespace": namespace},
            "data": {"Corefile": corefile},
        },
        _deployment(
            "coredns",
            namespace,
            labels,
            {
                "serviceAccountName": "coredns",
                "dnsPolicy": "Default",
                "containers": [
                    {
                        "name": "coredns",
                        "image": images.tool_reference("coredns"),
                        "args": ["-conf", "/etc/coredns/Corefile"],
                        "ports": [
                            {"name": "dns", "containerPort": _DNS_PORT, "protocol": "UDP"},
                            {"name": "dns-tcp", "containerPort": _DNS_PORT, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                        "securityContext": _RESTRICTED,
                        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
                    }
                ],
                "volumes": [{"name": "config", "configMap": {"name": "coredns"}}],
            },
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": DNS_SERVICE, "namespace": namespace, "labels": labels},
            "spec": {
                "selector": labels,
                "clusterIP": dns_address(service_cidr),
                "ports": [
                    {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": _DNS_PORT},
                    {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": _DNS_PORT},
                ],
            },
        },
    ]


# -- KServe ----------------------------------------------------------------------------------------------------

_WEBHOOK_SERVICE = "kserve-webhook-server-service"


def kserve(pki: certificates.Pki, directory: Path) -> list[Manifest]:
    """KServe's release manifests (`config/default` of the pinned module, rendered by kubectl's kustomize) with
    what this machine cannot pull or run replaced: the controller image is the one built here, the webhook's
    certificate comes from the cluster's CA instead of cert-manager, and the kube-rbac-proxy sidecar (an image from
    another project, only guarding the metrics port) is left out. The CRDs come with the others, in full."""
    release = upstream.KSERVE.directory() / "config"
    rendered = [*_kustomize(release / "default"), *_kustomize(release / "configmap")]
    service_name = f"{_WEBHOOK_SERVICE}.{KSERVE_NAMESPACE}.svc"
    cert, key = certificates.issue(
        pki, directory, "kserve-webhook", (service_name, None), (service_name, f"{service_name}.cluster.local")
    )
    ca_bundle = base64.b64encode(pki.ca_cert.read_bytes()).decode()
    manifests = []
    for manifest in rendered:
        kind = manifest["kind"]
        if kind == "Certificate":
            # What cert-manager would have made from it: the serving certificate, in the Secret it names.
            manifests.append(_tls_secret(manifest["spec"]["secretName"], KSERVE_NAMESPACE, cert, key))
            continue
        if kind in {"CustomResourceDefinition", "Issuer"}:
            continue
        if kind == "Deployment":
            spec = manifest["spec"]["template"]["spec"]
            spec["containers"] = [c for c in spec["containers"] if c["name"] == "manager"]
            (manager,) = spec["containers"]
            manager["image"] = images.tool_reference("kserve-manager")
            manager["imagePullPolicy"] = "IfNotPresent"
            # One replica: no election to wait for.
            manager["args"] = [arg for arg in manager["args"] if arg != "--leader-elect"]
        elif kind in {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}:
            for webhook in manifest["webhooks"]:
                webhook["clientConfig"]["caBundle"] = ca_bundle
        elif kind == "ConfigMap" and manifest["metadata"]["name"] == "inferenceservice-config":
            manifest["metadata"]["namespace"] = KSERVE_NAMESPACE
            _standard_mode_behind_gateway(manifest["data"])
        manifests.append(manifest)
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": KSERVE_NAMESPACE}}, *manifests]


def _tls_secret(name: str, namespace: str, cert: Path, key: Path) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": name, "namespace": namespace},
        "data": {
            "tls.crt": base64.b64encode(cert.read_bytes()).decode(),
            "tls.key": base64.b64encode(key.read_bytes()).decode(),
        },
    }


def _standard_mode_behind_gateway(data: dict[str, str]) -> None:
    """Standard (raw Deployment) mode, with KServe's own routes attached to the Gateway that Traefik serves."""
    deploy = json.loads(data["deploy"])
    deploy["defaultDeploymentMode"] = "Standard"
    data["deploy"] = json.dumps(deploy)
    ingress = json.loads(data["ingress"])
    ingress.update(
        enableGatewayApi=True,
        kserveIngressGateway=f"{KSERVE_NAMESPACE}/{GATEWAY}",
        ingressDomain="example.com",
        urlScheme="http",
        disableIstioVirtualHost=True,
    )
    data["ingress"] = json.dumps(ingress)


def _kustomize(directory: Path) -> Iterator[Manifest]:
    # kubectl's built-in kustomize: what `kubectl apply -k` of the release would apply.
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise KubectlError(["kustomize", str(directory)], result.returncode, result.stderr)
    yield from (document for document in yaml.safe_load_all(result.stdout) if document)


# -- Traefik ---------------------------------------------------------------------------------------------------


def traefik() -> list[Manifest]:
    """Traefik as the cluster's Gateway API implementation (and its own TraefikService CRD provider, which Steward's
    `traefik` traffic provider writes), with per-backend Prometheus metrics; the Gateway KServe attaches its routes
    to; Traefik's RBAC as its release documents it."""
    labels = {"app.kubernetes.io/name": "traefik"}
    account = "traefik"
    rbac = []
    documents = upstream.TRAEFIK.directory() / "docs" / "content" / "reference" / "dynamic-configuration"
    for name in ("kubernetes-gateway-rbac.yml", "kubernetes-crd-rbac.yml"):
        for manifest in yaml.safe_load_all((documents / name).read_text()):
            if not manifest:
                continue
            if manifest["kind"] == "ClusterRoleBinding":
                manifest["subjects"] = [{"kind": "ServiceAccount", "name": account, "namespace": TRAEFIK_NAMESPACE}]
            rbac.append(manifest)
    arguments = [
        "--entryPoints.web.address=:8000",
        f"--entryPoints.metrics.address=:{TRAEFIK_METRICS_PORT}",
        "--ping=true",
        "--ping.entryPoint=metrics",
        "--providers.kubernetesgateway=true",
        "--providers.kubernetescrd=true",
        "--providers.kubernetescrd.allowCrossNamespace=true",
        # A Service with no ready pod (a challenger's, killed) answers 503 for its share, instead of taking down
        # the weighted TraefikService that names it, and with it every request of the route.
        "--providers.kubernetescrd.allowEmptyServices=true",
        "--metrics.prometheus=true",
        "--metrics.prometheus.entryPoint=metrics",
        # The evidence a release needs from the gateway: requests and errors per backend Service.
        "--metrics.prometheus.addServicesLabels=true",
        "--metrics.prometheus.addRoutersLabels=true",
        "--log.level=INFO",
    ]
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": TRAEFIK_NAMESPACE}},
        _account(account, TRAEFIK_NAMESPACE),
        *rbac,
        _deployment(
            "traefik",
            TRAEFIK_NAMESPACE,
            labels,
            {
                "serviceAccountName": account,
                "containers": [
                    {
                        "name": "traefik",
                        "image": images.tool_reference("traefik"),
                        "args": arguments,
                        "ports": [
                            {"name": "web", "containerPort": GATEWAY_PORT},
                            {"name": "metrics", "containerPort": TRAEFIK_METRICS_PORT},
                        ],
                        "readinessProbe": {
                            "httpGet": {"path": "/ping", "port": TRAEFIK_METRICS_PORT},
                            "periodSeconds": 2,
                        },
                        "securityContext": _RESTRICTED,
                    }
                ],
            },
            annotations={"prometheus.io/scrape": "true", "prometheus.io/port": str(TRAEFIK_METRICS_PORT)},
        ),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "traefik", "namespace": TRAEFIK_NAMESPACE, "labels": labels},
            "spec": {"selector": labels, "ports": [{"name": "web", "port": 80, "targetPort": "web"}]},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": "traefik.io/gateway-controller"},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY, "namespace": KSERVE_NAMESPACE},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {
                        "name": "http",
                        "protocol": "HTTP",
                        "port": GATEWAY_PORT,
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    }
                ],
            },
        },
    ]


# -- installing ------------------------------------------------------------------------------------------------


def install(kubectl: Kubectl, manifests: list[Manifest], timeout: float = READY_TIMEOUT) -> float:
    """Apply `manifests` server-side and wait until every Deployment among them is available; returns seconds."""
    started = time.monotonic()
    namespaces = [m for m in manifests if m["kind"] == "Namespace"]
    rest = [m for m in manifests if m["kind"] != "Namespace"]
    for batch in (namespaces, rest):
        if batch:
            kubectl.run(
                "apply",
                "--server-side",
                "--field-manager=steward-harness",
                "-f",
                "-",
                stdin=yaml.safe_dump_all(batch, sort_keys=False),
            )
    for deployment in (m for m in manifests if m["kind"] == "Deployment"):
        name, namespace = deployment["metadata"]["name"], deployment["metadata"]["namespace"]
        remaining = max(1.0, timeout - (time.monotonic() - started))
        kubectl.run(
            "rollout", "status", f"deployment/{name}", "-n", namespace, f"--timeout={remaining:.0f}s", timeout=timeout
        )
    return time.monotonic() - started


def _account(name: str, namespace: str) -> Manifest:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": namespace}}


def _cluster_binding(name: str, role: str, account: str, namespace: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    }


def _deployment(
    name: str, namespace: str, labels: dict[str, str], pod: Manifest, annotations: dict[str, str] | None = None
) -> Manifest:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels, "annotations": annotations or {}}, "spec": pod},
        },
    }
