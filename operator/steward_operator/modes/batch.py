"""Batch serving: one CronJob per live version running `steward-predict batch`. A challenger scores the same input
into a shadow location with the incumbent's bundle beside its own, comparing the two row by row; its runs' summaries
(in their pods' termination messages) are the evidence its release is judged on, and it then takes over. Where
outcomes judge the model, the incumbent's runs report every row to the monitor; in shadow, where a guardrail reads
outcomes, they score each row with the challenger's bundle too and report its answers under the same request ids,
so the outcomes the team posts for the output judge both versions."""

from __future__ import annotations

from typing import Any, Literal

from steward_contracts import environment as env
from steward_operator import guardrails, settings, specs
from steward_operator.children import Owner, child_name, owned
from steward_operator.kinds import CRON_JOB, Kind
from steward_operator.modes import bundles
from steward_operator.modes.base import Live, Plan, Release
from steward_operator.modes.online import monitor_environment
from steward_operator.stages import Layout

DETERMINED = {"containerName": "predictor", "operator": "In", "values": [2, 3, 4]}
"""steward-predict batch's exit codes that another try cannot change: usage, rejected, bundle refused."""
TERMINATION_LOG = "/dev/termination-log"
"""Where a container's termination message is written: every run leaves its summary there (`kubectl describe pod`
shows it), a challenger's with its comparison."""


class Batch:
    name: str = "batch"
    layout: Layout = Layout("batch", canary=False, always_shadows=True, timed=False)
    evidence: Literal["scrapes", "runs"] = "runs"
    lags: bool = False
    children: tuple[Kind, ...] = (CRON_JOB,)

    def plan(self, owner: Owner, spec: specs.ModelDeploymentSpec, release: Release) -> Plan:
        """One CronJob per live version: the incumbent writes the output (in shadow, where a guardrail reads
        outcomes and a monitor takes them, with the challenger's answers reported beside its own); the challenger
        scores the same input on the same schedule, with the incumbent's bundle too, into a shadow location, from
        Validating on (its runs carry both versions' held-out results, then their comparison)."""
        shadowed = release.challenger if release.shadow_percent and guardrails.on_outcomes(spec) else None
        jobs = [cron_job(owner, spec, release.incumbent, "incumbent", shadowed=shadowed)]
        if release.challenger is not None:
            jobs.append(cron_job(owner, spec, release.challenger, "shadow", compared=release.incumbent))
        return Plan(serving=jobs)

    def ready(self, child: dict[str, Any], answering: frozenset[str], *, current: bool) -> bool | None:
        """A CronJob serves its version as soon as it exists."""
        return True if child["kind"] == CRON_JOB.kind else None

    def answering_service(self, child: dict[str, Any]) -> str | None:
        return None

    def gateway(self, model: str, namespace: str, version: str, spec: specs.ModelDeploymentSpec) -> None:
        return None

    def describe_shadow(self, spec: specs.ModelDeploymentSpec) -> str:
        return "scoring the same batches in shadow"


def cron_job(
    owner: Owner,
    spec: specs.ModelDeploymentSpec,
    live: Live,
    variant: str,
    *,
    compared: Live | None = None,
    shadowed: Live | None = None,
) -> dict[str, Any]:
    """A CronJob running the predictor image's batch command (steward-predict batch) on `live`'s bundle; with
    `compared`, scoring each chunk with that version's bundle too and leaving the comparison in the termination
    message. The incumbent's runs report their rows to the monitor, if there is one, and with `shadowed`, that
    version's answers to them too (see `reports`)."""
    batch = spec.serving.batch
    if batch is None:
        raise ValueError("serving.batch is required in batch mode")
    container: dict[str, Any] = {"name": "predictor", "image": settings.PREDICTOR_IMAGE, "command": ["steward-predict"]}
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    reporting = monitor_environment(owner) if variant == "incumbent" and reports(spec) else []
    shadowed = shadowed if reporting else None
    other = compared or shadowed
    read = bundles.mount([live.bundle, *([other.bundle] if other else [])], pod, container)
    arguments = ["batch", "--bundle", read[0], "--summary-file", TERMINATION_LOG]
    if live.digest:
        arguments += ["--digest", live.digest]
    if compared is not None:
        arguments += ["--compare-with", read[1], *(["--compare-digest", compared.digest] if compared.digest else [])]
    if shadowed is not None:
        arguments += ["--shadow", read[1], *(["--shadow-digest", shadowed.digest] if shadowed.digest else [])]
    for name in spec.model.trusted_types:
        arguments += ["--trust-type", name]
    output, rejects = batch.output, batch.rejects
    if variant == "shadow":
        output = shadow_location(output, live.version)
        rejects = shadow_location(rejects, live.version) if rejects else None
    arguments += _location("input", batch.input) + _location("output", output)
    if rejects is not None:
        arguments += _location("rejects", rejects)
    arguments += ["--if-exists", "replace", "--chunk-rows", str(batch.chunk_rows)]
    secrets = {location.credentials_secret for location in (batch.input, output, rejects) if location} - {None}
    container["args"] = arguments
    container["env"] = [{"name": env.MODEL_VERSION, "value": live.version}, {"name": env.VARIANT, "value": variant}]
    if reporting:
        container["env"] += [{"name": env.MODEL, "value": owner.name}, *reporting]
    if secrets:
        container["envFrom"] = [{"secretRef": {"name": secret}} for secret in sorted(s for s in secrets if s)]
    labels = {"steward.dev/model": owner.name, "steward.dev/version": live.version, "steward.dev/variant": variant}
    job_spec: dict[str, Any] = {
        "schedule": batch.schedule,
        "suspend": False,
        # A run still going when the next is due is left to finish; two never write the same output.
        "concurrencyPolicy": "Forbid",
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {
            "metadata": {"labels": labels},
            "spec": {
                "backoffLimit": 2,
                # A bad flag, too many rejected rows or a refused bundle fail the same way every time: only a
                # runtime failure (exit 1: storage away, the pod evicted) is worth another try.
                "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": DETERMINED}]},
                "activeDeadlineSeconds": int(specs.seconds(batch.active_deadline)),
                "template": {
                    "metadata": {"labels": labels},
                    "spec": pod,
                },
            },
        },
    }
    if batch.time_zone:
        job_spec["timeZone"] = batch.time_zone
    job = owned(owner, CRON_JOB, job_spec)
    job["metadata"]["name"] = child_name(owner.name, live.version)
    job["metadata"]["labels"].update({"app.kubernetes.io/name": "steward-batch", **labels})
    return job


def reports(spec: specs.ModelDeploymentSpec) -> bool:
    """Whether the incumbent's runs report their rows to the monitor: where outcomes will judge them (the spec
    watches an outcome metric, or a guardrail reads outcomes). Every row is an event, sent as fast as the monitor
    takes them, so a model nobody labels does not pay for it."""
    return spec.monitoring.outcome is not None or guardrails.on_outcomes(spec)


def shadow_location(location: specs.DataLocation, version: str) -> specs.DataLocation:
    """Where a shadowing challenger writes: beside the output, never inside it. A table gets the suffix
    _shadow; a file scores.parquet becomes scores.shadow-<version>.parquet, a prefix scores/ becomes
    scores.shadow-<version>/."""
    if location.table:
        return location.model_copy(update={"table": f"{location.table}_shadow"})
    uri = location.uri.rstrip("/")
    head, slash, tail = uri.rpartition("/")
    stem, dot, suffix = tail.rpartition(".") if "." in tail else (tail, "", "")
    shadowed = f"{head}{slash}{stem}.shadow-{version}{dot}{suffix}"
    return location.model_copy(update={"uri": shadowed + ("/" if location.uri.endswith("/") else "")})


def _location(role: str, location: specs.DataLocation) -> list[str]:
    arguments = [f"--{role}", location.uri]
    if location.table:
        arguments += [f"--{role}-table", location.table]
    if location.format:
        arguments += [f"--{role}-format", location.format]
    return arguments
