"""Streaming serving: one StatefulSet of `steward-predict stream` workers per ModelDeployment, scoring the input topic
into the output topic exactly once. Each worker hosts the live versions: the incumbent, and during a release the
challenger, which takes its weight's share of the records (by key) or, in the shadow stage, scores every record
for evidence only. The workers export the predictors' metrics per version, so a streaming release is judged
exactly as an online one; a change of split rolls the workers, and a rolled worker's transactional id (its
ordinal) fences the one it replaces."""

from __future__ import annotations

from typing import Any, Literal

from steward_operator import settings, specs
from steward_operator.children import CHALLENGER_LABEL, VERSION_LABEL, Owner, owned
from steward_operator.kinds import Kind
from steward_operator.modes import bundles
from steward_operator.modes.base import Live, Plan, Release
from steward_operator.modes.online import drift_environment, monitor_environment
from steward_operator.stages import Layout

STATEFUL_SET = Kind("apps/v1", "StatefulSet", "statefulsets")
CLIENT_CONFIG = "/etc/steward/kafka"
"""Where a worker finds the client Secret's client.properties."""
STOP_SECONDS = 30
"""A stopping worker commits or aborts its open transaction and leaves its group well within this."""


class Streaming:
    name: str = "streaming"
    layout: Layout = Layout("streaming")
    evidence: Literal["scrapes", "runs"] = "scrapes"
    lags: bool = True
    children: tuple[Kind, ...] = (STATEFUL_SET,)

    def plan(self, owner: Owner, spec: specs.ModelDeploymentSpec, release: Release) -> Plan:
        """One StatefulSet whose workers host every live version."""
        return Plan(serving=[stateful_set(owner, spec, release)])

    def ready(self, child: dict[str, Any], answering: frozenset[str], *, current: bool) -> bool | None:
        """Ready once every worker runs the current template and is ready. With `current` False, also while a
        change rolls out: a worker being replaced leaves its records waiting in the topic for the next one, so
        no record goes unanswered and no share need move back (a rollout that never ends is rolled back at
        rollout.progressDeadline)."""
        if child["kind"] != STATEFUL_SET.kind:
            return None
        status = child.get("status") or {}
        wanted = int((child.get("spec") or {}).get("replicas", 1))
        ready = int(status.get("readyReplicas", 0)) >= wanted
        rolled = (
            status.get("observedGeneration") == child["metadata"].get("generation")
            and int(status.get("updatedReplicas", 0)) >= wanted
            and status.get("updateRevision") in (None, status.get("currentRevision"))
        )
        return ready and rolled if current else ready or not rolled

    def answering_service(self, child: dict[str, Any]) -> str | None:
        return None

    def gateway(self, model: str, namespace: str, version: str, spec: specs.ModelDeploymentSpec) -> None:
        return None

    def describe_shadow(self, spec: specs.ModelDeploymentSpec) -> str:
        return "shadow: the challenger scores every record, and writes none"


def group(owner: Owner, streaming: specs.StreamingServing) -> str:
    return streaming.consumer_group or f"steward-{owner.namespace}-{owner.name}"


def stateful_set(owner: Owner, spec: specs.ModelDeploymentSpec, release: Release) -> dict[str, Any]:
    """The workers of `release`: their flags name the live versions and the split between them."""
    streaming = spec.serving.streaming
    if streaming is None:
        raise ValueError("serving.streaming is required in streaming mode")
    consumers = group(owner, streaming)
    container: dict[str, Any] = {"name": "worker", "image": settings.PREDICTOR_IMAGE, "command": ["steward-predict"]}
    pod: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": STOP_SECONDS}
    challenger = release.challenger
    lives = [release.incumbent] if challenger is None else [release.incumbent, challenger]
    paths = bundles.mount([live.bundle for live in lives], pod, container)
    arguments = ["stream", f"--model={owner.name}", *_version("", release.incumbent, paths[0])]
    if challenger is not None:
        arguments += _version("challenger-", challenger, paths[1])
        if release.challenger_weight:
            arguments.append(f"--challenger-percent={release.challenger_weight}")
        if release.shadow_percent:
            arguments.append("--shadow")
    for name in spec.model.trusted_types:
        arguments.append(f"--trust-type={name}")
    dead_letters = streaming.dead_letter_topic or f"{streaming.output_topic}.dead-letter"
    arguments += [
        f"--brokers={','.join(streaming.brokers)}",
        f"--input-topic={streaming.input_topic}",
        f"--output-topic={streaming.output_topic}",
        f"--dead-letter-topic={dead_letters}",
        f"--group={consumers}",
        # Stable per worker: the pod's name ends in its ordinal, so a restarted worker fences the one it replaces.
        f"--transactional-id={consumers}-$(POD_NAME)",
        f"--max-records={streaming.max_records}",
        f"--commit-interval-ms={max(1, round(specs.seconds(streaming.commit_interval) * 1000))}",
        f"--dead-letter-ceiling={streaming.dead_letter_ceiling:g}",
        f"--port={settings.PREDICTOR_PORT}",
    ]
    environment: list[dict[str, Any]] = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        *drift_environment(spec),
        *monitor_environment(owner),
    ]
    port = settings.PREDICTOR_PORT
    container.update(
        {
            "args": arguments,
            "env": environment,
            "ports": [{"containerPort": port, "protocol": "TCP"}],
            # Not ready until the bundles checked out and the worker takes records; 503 with the reason when halted.
            "readinessProbe": {"httpGet": {"path": "/ready", "port": port}, "periodSeconds": 5},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": port}, "periodSeconds": 10},
        }
    )
    if streaming.client_secret is not None:
        arguments.append(f"--client-config={CLIENT_CONFIG}/client.properties")
        mounted = {"name": "kafka-client", "mountPath": CLIENT_CONFIG, "readOnly": True}
        container.setdefault("volumeMounts", []).append(mounted)
        secret = {"name": "kafka-client", "secret": {"secretName": streaming.client_secret.name}}
        pod.setdefault("volumes", []).append(secret)
    if streaming.resources is not None:
        container["resources"] = streaming.resources.model_dump(by_alias=True, exclude_none=True)
    labels = {"steward.dev/model": owner.name, "app.kubernetes.io/name": "steward-stream"}
    workers = owned(
        owner,
        STATEFUL_SET,
        {
            "replicas": streaming.replicas,
            "serviceName": owner.name,
            # Workers start and stop together: a group rebalances once, not once per worker.
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod,
            },
        },
    )
    workers["metadata"]["labels"].update(
        {"app.kubernetes.io/name": "steward-stream", VERSION_LABEL: release.incumbent.version}
    )
    if challenger is not None:
        workers["metadata"]["labels"][CHALLENGER_LABEL] = challenger.version
    return workers


def _version(prefix: str, live: Live, path: str) -> list[str]:
    found = [f"--{prefix}bundle={path}", f"--{prefix}version={live.version}"]
    if live.digest:
        found.append(f"--{prefix}digest={live.digest}")
    return found
