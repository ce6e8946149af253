"""Planning batch serving: the CronJobs a ModelDeployment should have at each point of a release, as pure data,
and the command line they run, read back by the predictor's own parser."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from steward_operator import releases, releasing, settings, specs
from steward_operator.children import Owner
from steward_operator.modes import Live, Release
from steward_operator.modes.batch import Batch, cron_job, shadow_location
from steward_operator.planners import plan, release_of
from steward_predictor import locations
from steward_predictor.cli import predict_parser as parser
from steward_predictor.defaults import EXIT_REFUSED, EXIT_REJECTED, EXIT_USAGE
from tests.conftest import REPOSITORY

DIGEST = "sha256:9f2c4b1e0d8a7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d9c8b7a6f5e4d3c2b"
V12 = Live("v12", "s3://models/credit-limits/v12/", DIGEST)
V13 = Live("v13", "s3://models/credit-limits/v13/")
T0 = datetime(2024, 6, 1, 2, 30, tzinfo=UTC)


def _spec(example: str = "batch.yaml", **batch: object) -> specs.ModelDeploymentSpec:
    """An example manifest's spec, with `serving.batch` fields replaced."""
    manifest = yaml.safe_load((REPOSITORY / "examples" / example).read_text())
    if batch:
        manifest["spec"]["serving"]["batch"].update(batch)
    return specs.ModelDeploymentSpec.model_validate(manifest["spec"])


def _jobs(release: Release, spec: specs.ModelDeploymentSpec | None = None) -> list[dict[str, Any]]:
    spec = spec or _spec()
    return Batch().plan(Owner("credit-limits", "risk", "uid-7", spec.rollout.traffic), spec, release).of("CronJob")


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    (container,) = containers
    return container


def _parsed(job: dict[str, Any]) -> argparse.Namespace:
    """The job's command line as `steward-predict` reads it."""
    container = _container(job)
    assert container["command"] == ["steward-predict"]
    return parser().parse_args(container["args"])


def _location(uri: str, **fields: object) -> specs.DataLocation:
    return specs.DataLocation.model_validate({"uri": uri, **fields})


# --- the incumbent's CronJob ---------------------------------------------------------------------------------


def test_the_incumbent_scores_on_the_schedule_in_its_time_zone() -> None:
    (job,) = _jobs(Release(V12))
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "CronJob")
    metadata = job["metadata"]
    assert (metadata["name"], metadata["namespace"]) == ("credit-limits--v12", "risk")
    assert metadata["ownerReferences"] == [
        {
            "apiVersion": "steward.dev/v1alpha1",
            "kind": "ModelDeployment",
            "name": "credit-limits",
            "uid": "uid-7",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert metadata["labels"] == {
        "app.kubernetes.io/managed-by": "steward",
        "app.kubernetes.io/name": "steward-batch",
        "steward.dev/model": "credit-limits",
        "steward.dev/version": "v12",
        "steward.dev/variant": "incumbent",
    }
    spec = job["spec"]
    assert spec["schedule"] == "30 2 * * *"
    assert spec["timeZone"] == "Europe/Berlin"
    assert spec["suspend"] is False
    assert spec["concurrencyPolicy"] == "Forbid"
    run = spec["jobTemplate"]["spec"]
    assert run["activeDeadlineSeconds"] == 6 * 3600
    assert run["template"]["spec"]["restartPolicy"] == "Never"
    pod_labels = {
        "steward.dev/model": "credit-limits",
        "steward.dev/version": "v12",
        "steward.dev/variant": "incumbent",
    }
    assert spec["jobTemplate"]["metadata"]["labels"] == pod_labels
    assert run["template"]["metadata"]["labels"] == pod_labels


def test_the_incumbent_runs_the_predictors_batch_command_on_its_bundle() -> None:
    (job,) = _jobs(Release(V12))
    container = _container(job)
    assert container["image"] == settings.PREDICTOR_IMAGE
    assert container["args"] == [
        "batch",
        "--bundle",
        "s3://models/credit-limits/v12/",
        "--summary-file",
        "/dev/termination-log",
        "--digest",
        DIGEST,
        "--input",
        "postgresql://warehouse.data.svc:5432/analytics",
        "--input-table",
        "customers_daily",
        "--input-format",
        "sql",
        "--output",
        "s3://scores/credit-limits/",
        "--output-format",
        "parquet",
        "--if-exists",
        "replace",
        "--chunk-rows",
        "100000",
    ]
    assert {item["name"]: item["value"] for item in container["env"]} == {
        "STEWARD_MODEL_VERSION": "v12",
        "STEWARD_VARIANT": "incumbent",
    }
    assert container["envFrom"] == [{"secretRef": {"name": "warehouse-reader"}}]
    assert "resources" not in container


def test_a_cron_job_takes_no_resources_from_online_settings() -> None:
    """serving.online belongs to online serving (the API server refuses it in batch mode); a CronJob never
    borrows its resources."""
    manifest = yaml.safe_load((REPOSITORY / "examples" / "batch.yaml").read_text())
    manifest["spec"]["serving"]["online"] = {"resources": {"limits": {"cpu": "2", "memory": "4Gi"}}}
    spec = specs.ModelDeploymentSpec.model_validate(manifest["spec"])
    assert spec.serving.online is not None
    for job in _jobs(Release(V12, V13, shadow_percent=100), spec):
        assert "resources" not in _container(job)


def test_the_incumbents_command_line_is_one_the_predictor_accepts() -> None:
    (job,) = _jobs(Release(V12))
    args = _parsed(job)
    assert args.command == "batch"
    assert (args.bundle, args.digest) == ("s3://models/credit-limits/v12/", DIGEST)
    assert (args.input, args.input_table, args.input_format) == (
        "postgresql://warehouse.data.svc:5432/analytics",
        "customers_daily",
        "sql",
    )
    assert (args.output, args.output_table, args.output_format) == ("s3://scores/credit-limits/", None, "parquet")
    assert args.rejects is None
    assert args.if_exists == "replace"
    assert args.chunk_rows == 100_000


def test_a_claims_bundle_is_read_from_the_claim_mounted_read_only() -> None:
    (job,) = _jobs(Release(Live("v12", "pvc://credit-models/limits/v12")))
    pod = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "bundles-0", "persistentVolumeClaim": {"claimName": "credit-models", "readOnly": True}}
    ]
    container = _container(job)
    assert container["volumeMounts"] == [
        {"name": "bundles-0", "mountPath": "/mnt/bundles/credit-models", "readOnly": True}
    ]
    assert _parsed(job).bundle == "/mnt/bundles/credit-models/limits/v12"


def test_an_unpinned_bundle_passes_no_digest() -> None:
    (job,) = _jobs(Release(V13))
    assert "--digest" not in _container(job)["args"]
    assert _parsed(job).digest is None


def test_the_schedule_falls_back_to_the_controllers_time_zone_and_the_deadline_follows_the_spec() -> None:
    spec = _spec(timeZone=None, activeDeadline="1h30m", schedule="@daily")
    (job,) = _jobs(Release(V12), spec)
    assert "timeZone" not in job["spec"]
    assert job["spec"]["schedule"] == "@daily"
    assert job["spec"]["jobTemplate"]["spec"]["activeDeadlineSeconds"] == 5400


def test_every_credentials_secret_is_passed_once_and_none_without_any() -> None:
    spec = _spec(
        input={
            "uri": "postgresql://warehouse/analytics",
            "table": "customers",
            "format": "sql",
            "credentialsSecret": "b",
        },
        output={
            "uri": "postgresql://warehouse/analytics",
            "table": "scores",
            "format": "sql",
            "credentialsSecret": "a",
        },
        rejects={
            "uri": "postgresql://warehouse/analytics",
            "table": "rejects",
            "format": "sql",
            "credentialsSecret": "b",
        },
    )
    (job,) = _jobs(Release(V12), spec)
    assert _container(job)["envFrom"] == [{"secretRef": {"name": "a"}}, {"secretRef": {"name": "b"}}]
    bare = _spec(input={"uri": "file:///data/in.csv"}, output={"uri": "file:///data/out.csv"})
    (job,) = _jobs(Release(V12), bare)
    assert "envFrom" not in _container(job)


def test_tables_and_rejects_reach_the_predictor() -> None:
    spec = _spec(
        output={"uri": "postgresql://warehouse/analytics", "table": "limits", "format": "sql"},
        rejects={"uri": "file:///data/rejects.csv"},
    )
    (job,) = _jobs(Release(V12), spec)
    args = _parsed(job)
    assert (args.output, args.output_table, args.output_format) == ("postgresql://warehouse/analytics", "limits", "sql")
    assert (args.rejects, args.rejects_table, args.rejects_format) == ("file:///data/rejects.csv", None, None)


def test_a_cron_job_needs_batch_settings() -> None:
    spec = specs.ModelDeploymentSpec.model_validate(
        yaml.safe_load((REPOSITORY / "examples" / "online.yaml").read_text())["spec"]
    )
    owner = Owner(name="churn", namespace="ml", uid="uid-1", traffic=spec.rollout.traffic)
    with pytest.raises(ValueError, match=r"serving\.batch is required"):
        cron_job(owner, spec, V12, "incumbent")


# --- the challenger's CronJob --------------------------------------------------------------------------------


def test_the_challenger_runs_from_validation_on_comparing_itself_with_the_incumbent() -> None:
    for release in (Release(V12, V13), Release(V12, V13, shadow_percent=100)):
        incumbent, challenger = _jobs(release)
        assert (incumbent["spec"]["suspend"], challenger["spec"]["suspend"]) == (False, False)
        ours, theirs = _parsed(incumbent), _parsed(challenger)
        assert (theirs.compare_with, theirs.compare_digest) == (V12.bundle, V12.digest)
        assert theirs.summary_file == ours.summary_file == "/dev/termination-log"
        assert ours.compare_with is None


def test_a_run_that_would_fail_the_same_way_again_is_not_retried() -> None:
    (job,) = _jobs(Release(V12))
    rules = job["spec"]["jobTemplate"]["spec"]["podFailurePolicy"]["rules"]
    assert rules == [
        {"action": "FailJob", "onExitCodes": {"containerName": "predictor", "operator": "In", "values": [2, 3, 4]}}
    ]
    assert [EXIT_USAGE, EXIT_REJECTED, EXIT_REFUSED] == [2, 3, 4]
    assert job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"] == "Never"


def test_a_pvc_bundle_compared_with_is_mounted_once_beside_the_challengers() -> None:
    incumbent = Live("v12", "pvc://bundles/credit/v12")
    _, challenger = _jobs(Release(incumbent, Live("v13", "pvc://bundles/credit/v13")))
    arguments = _parsed(challenger)
    assert (arguments.bundle, arguments.compare_with) == (
        "/mnt/bundles/bundles/credit/v13",
        "/mnt/bundles/bundles/credit/v12",
    )
    assert [
        volume["persistentVolumeClaim"]["claimName"]
        for volume in challenger["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    ] == ["bundles"]


def test_the_challenger_scores_the_same_input_into_a_shadow_location() -> None:
    incumbent, challenger = _jobs(Release(V12, V13, shadow_percent=100))
    assert challenger["metadata"]["name"] == "credit-limits--v13"
    assert challenger["metadata"]["labels"]["steward.dev/variant"] == "shadow"
    assert challenger["metadata"]["labels"]["steward.dev/version"] == "v13"
    assert challenger["spec"]["schedule"] == incumbent["spec"]["schedule"]
    container = _container(challenger)
    assert {item["name"]: item["value"] for item in container["env"]} == {
        "STEWARD_MODEL_VERSION": "v13",
        "STEWARD_VARIANT": "shadow",
    }
    ours, theirs = _parsed(incumbent), _parsed(challenger)
    assert theirs.bundle == "s3://models/credit-limits/v13/"
    assert (theirs.input, theirs.input_table, theirs.input_format) == (ours.input, ours.input_table, ours.input_format)
    assert theirs.output == "s3://scores/credit-limits.shadow-v13/"
    assert theirs.output_format == "parquet"
    assert container["envFrom"] == [{"secretRef": {"name": "warehouse-reader"}}]


def test_the_challenger_writes_tables_and_rejects_beside_the_incumbents() -> None:
    spec = _spec(
        output={"uri": "postgresql://warehouse/analytics", "table": "limits", "format": "sql"},
        rejects={"uri": "file:///data/rejects/limits.csv"},
    )
    _, challenger = _jobs(Release(V12, V13, shadow_percent=100), spec)
    args = _parsed(challenger)
    assert (args.output, args.output_table) == ("postgresql://warehouse/analytics", "limits_shadow")
    assert args.rejects == "file:///data/rejects/limits.shadow-v13.csv"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (
            _location("postgresql://warehouse/analytics", table="limits", format="sql"),
            ("postgresql://warehouse/analytics", "limits_shadow"),
        ),
        (_location("s3://scores/credit-limits/"), ("s3://scores/credit-limits.shadow-v13/", None)),
        (_location("s3://scores/credit-limits"), ("s3://scores/credit-limits.shadow-v13", None)),
        (_location("file:///data/out/scores.parquet"), ("file:///data/out/scores.shadow-v13.parquet", None)),
        (_location("/data/out.csv"), ("/data/out.shadow-v13.csv", None)),
    ],
)
def test_a_shadow_location_lies_beside_the_output(
    location: specs.DataLocation, expected: tuple[str, str | None]
) -> None:
    shadow = shadow_location(location, "v13")
    assert (shadow.uri, shadow.table) == expected


def test_a_shadow_location_keeps_format_and_credentials() -> None:
    location = _location("s3://scores/limits/", format="parquet", credentialsSecret="writer")
    shadow = shadow_location(location, "v13")
    assert (shadow.format, shadow.credentials_secret) == ("parquet", "writer")


@pytest.mark.parametrize(
    "output", ["file:///data/scores/", "file:///data/scores", "file:///data/scores.parquet", "/data/out/scores"]
)
def test_the_shadow_output_never_lies_inside_the_incumbents_output(output: str) -> None:
    spec = _spec(output={"uri": output, "format": "parquet"})
    incumbent, challenger = _jobs(Release(V12, V13, shadow_percent=100), spec)
    ours, theirs = _parsed(incumbent), _parsed(challenger)
    mine = locations.locate(ours.output, ours.output_format, ours.output_table, role="output").path
    shadow = locations.locate(theirs.output, theirs.output_format, theirs.output_table, role="output").path
    assert not PurePosixPath(shadow).is_relative_to(PurePosixPath(mine))


def test_the_batch_examples_locations_are_ones_the_predictor_can_open() -> None:
    for job in _jobs(Release(V12, V13, shadow_percent=100)):
        args = _parsed(job)
        locations.locate(args.input, args.input_format, args.input_table, role="input")
        locations.locate(args.output, args.output_format, args.output_table, role="output")


# --- from status to plan -------------------------------------------------------------------------------------


def _served(live: Live) -> specs.ServedVersion:
    return specs.ServedVersion(version=live.version, bundle=live.bundle, digest=live.digest, since=T0)


def test_release_of_reads_who_serves_and_the_split_from_status() -> None:
    status = specs.ModelDeploymentStatus(
        incumbent=_served(V12),
        challenger=_served(V13),
        weights=specs.Weights(incumbent=75, challenger=25, shadow=10),
    )
    assert release_of(status) == Release(V12, V13, 25, 10)


def test_release_of_without_a_challenger_sends_it_nothing() -> None:
    status = specs.ModelDeploymentStatus(
        incumbent=_served(V12), weights=specs.Weights(incumbent=75, challenger=25, shadow=10)
    )
    assert release_of(status) == Release(V12)
    assert release_of(specs.ModelDeploymentStatus(incumbent=_served(V12), challenger=_served(V13))) == Release(V12, V13)


def test_release_of_needs_an_incumbent() -> None:
    with pytest.raises(ValueError, match="incumbent"):
        release_of(specs.ModelDeploymentStatus())


def test_plan_picks_the_children_of_the_serving_mode() -> None:
    batch = plan("credit-limits", "risk", "uid-7", _spec(), Release(V12, V13, 0, 100))
    assert [job["kind"] for job in batch.serving] == ["CronJob", "CronJob"]
    assert batch.routes == []
    streaming = plan("payment-fraud", "tns", "uid-8", _spec("streaming.yaml"), Release(V12))
    assert streaming.routes == []
    assert [workers["kind"] for workers in streaming.serving] == ["StatefulSet"]
    online = plan("churn", "ml", "uid-9", _spec("online.yaml"), Release(V12))
    assert [service["kind"] for service in online.serving] == ["InferenceService"]


def _advance(
    spec: specs.ModelDeploymentSpec, status: specs.ModelDeploymentStatus, action: str | None = None
) -> specs.ModelDeploymentStatus:
    """One reconcile with both versions' CronJobs in place (a CronJob is ready once it exists)."""
    if action is not None:
        wanted = specs.Operation.model_validate({"action": action, "requestedAt": T0})
        status = status.model_copy(update={"operation": wanted})
    return releasing.advance(spec, status, releases.Observed(2, T0, frozenset({"v12", "v13"}))).status


def test_a_batch_release_plans_the_challenger_from_validation_to_promotion() -> None:
    """The release machinery and the planner together: what each stage of a batch release asks of the cluster."""
    spec = _spec().model_copy(update={"model": specs.ModelRef(version="v12", bundle=V12.bundle, digest=DIGEST)})
    status = _advance(spec, specs.ModelDeploymentStatus())
    assert status.phase == "Stable"
    spec = spec.model_copy(update={"model": specs.ModelRef(version="v13", bundle=V13.bundle)})

    status = _advance(spec, status)
    assert status.phase == "Validating"
    jobs = _jobs(release_of(status), spec)
    assert [(job["metadata"]["name"], job["spec"]["suspend"]) for job in jobs] == [
        ("credit-limits--v12", False),
        ("credit-limits--v13", False),
    ]

    status = _advance(spec, status, "promote")
    assert status.phase == "Shadowing"
    jobs = _jobs(release_of(status), spec)
    assert [job["spec"]["suspend"] for job in jobs] == [False, False]
    assert _parsed(jobs[1]).output == "s3://scores/credit-limits.shadow-v13/"

    status = _advance(spec, status, "promote")
    assert status.phase == "Promoted"
    (job,) = _jobs(release_of(status), spec)
    assert job["metadata"]["name"] == "credit-limits--v13"
    assert job["metadata"]["labels"]["steward.dev/variant"] == "incumbent"
    assert _parsed(job).output == "s3://scores/credit-limits/"


def test_types_a_team_trusts_by_name_reach_the_batch_command() -> None:
    spec = _spec()
    spec = spec.model_copy(update={"model": spec.model.model_copy(update={"trusted_types": ["features.clean_text"]})})
    (job,) = _jobs(Release(V12), spec)
    arguments = _container(job)["args"]
    assert arguments[arguments.index("--trust-type") + 1] == "features.clean_text"
    assert parser().parse_args(arguments).trust_type[-1] == "features.clean_text"


# --- reporting to the monitor, and the incumbent's shadow of the challenger -------------------------------------


def _without_outcomes() -> specs.ModelDeploymentSpec:
    spec = _spec()
    kept = [guardrail for guardrail in spec.rollout.guardrails if guardrail.name != "outcome"]
    return spec.model_copy(update={"rollout": spec.rollout.model_copy(update={"guardrails": kept})})


@pytest.fixture
def monitored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(settings, "MONITOR_URL", "http://steward-monitor.steward:8080")
    monkeypatch.setattr(settings, "MONITOR_INGEST_KEY", "ingest-key")


@pytest.mark.usefixtures("monitored")
def test_only_the_incumbents_runs_report_to_the_monitor() -> None:
    incumbent, challenger = _jobs(Release(V12, V13, shadow_percent=100), _without_outcomes())
    environment = {item["name"]: item["value"] for item in _container(incumbent)["env"]}
    assert environment["STEWARD_MONITOR_URL"] == "http://steward-monitor.steward:8080"
    assert (environment["STEWARD_MODEL"], environment["STEWARD_NAMESPACE"]) == ("credit-limits", "risk")
    assert environment["STEWARD_MONITOR_TOKEN"].startswith("risk/credit-limits/")
    # A comparison run serves no one: nothing of it goes to the monitor, and without a guardrail on outcomes the
    # incumbent scores no challenger beside itself.
    named = {item["name"] for item in _container(challenger)["env"]}
    assert not {"STEWARD_MONITOR_URL", "STEWARD_MONITOR_TOKEN"} & named
    assert _parsed(incumbent).shadow is None


@pytest.mark.usefixtures("monitored")
def test_in_shadow_the_incumbent_scores_the_challenger_beside_itself_for_a_guardrail_on_outcomes() -> None:
    pinned = Live("v13", "s3://models/credit-limits/v13/", "sha256:" + "1" * 64)
    incumbent, challenger = _jobs(Release(V12, pinned, shadow_percent=100))
    arguments = _parsed(incumbent)
    assert (arguments.shadow, arguments.shadow_digest) == (pinned.bundle, pinned.digest)
    assert arguments.monitor_url is None  # from the environment, as the container has it
    assert arguments.output == "s3://scores/credit-limits/"
    assert _parsed(challenger).shadow is None
    # Validating: the challenger has proved nothing yet, and no incumbent's run loads its bundle.
    incumbent, _ = _jobs(Release(V12, pinned))
    assert _parsed(incumbent).shadow is None


@pytest.mark.usefixtures("monitored")
def test_a_model_nobody_labels_reports_nothing() -> None:
    """Every row is an event for the monitor: a model whose outcomes nothing reads does not pay for them."""
    spec = _without_outcomes()
    spec = spec.model_copy(update={"monitoring": spec.monitoring.model_copy(update={"outcome": None})})
    incumbent, _ = _jobs(Release(V12, V13, shadow_percent=100), spec)
    assert "STEWARD_MONITOR_URL" not in {item["name"] for item in _container(incumbent)["env"]}
    assert _parsed(incumbent).shadow is None


def test_without_a_monitor_no_run_reports_and_none_shadows() -> None:
    incumbent, _ = _jobs(Release(V12, V13, shadow_percent=100))
    assert _parsed(incumbent).shadow is None
    assert "STEWARD_MONITOR_URL" not in {item["name"] for item in _container(incumbent)["env"]}


@pytest.mark.usefixtures("monitored")
def test_a_pvc_bundle_shadowed_is_mounted_once_beside_the_incumbents() -> None:
    release = Release(Live("v12", "pvc://bundles/credit/v12"), Live("v13", "pvc://bundles/credit/v13"), 0, 100)
    incumbent, _ = _jobs(release)
    arguments = _parsed(incumbent)
    assert arguments.bundle == "/mnt/bundles/bundles/credit/v12"
    assert arguments.shadow == "/mnt/bundles/bundles/credit/v13"
    volumes = incumbent["spec"]["jobTemplate"]["spec"]["template"]["spec"]["volumes"]
    assert [volume["persistentVolumeClaim"]["claimName"] for volume in volumes] == ["bundles"]
