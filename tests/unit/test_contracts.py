"""The contracts between Steward's parts hold on both sides: each part exports exactly the metric families
steward_contracts names, the Prometheus provider reads the `*_created` series the predictor publishes, the alert
rules and the dashboard read only series, labels and label values that exist, and what the operator sets in a
predictor's pod is what the predictor reads."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, get_args

import prometheus_client
import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from steward_contracts import environment
from steward_contracts.metrics import (
    BUCKET_LABEL,
    DRIFT_THRESHOLDS,
    FAMILIES,
    LABEL_VALUES,
    MONITOR_FAMILIES,
    OPERATOR_FAMILIES,
    PREDICTOR_FAMILIES,
    PREDICTOR_REQUESTS,
    PREDICTOR_SCORES,
    PROBLEMS,
    QUALITY_METRICS,
    STREAM_FAMILIES,
    TARGET_LABELS,
    Family,
)
from steward_monitor.drifting import FeatureDrift
from steward_monitor.exporting import Metrics
from steward_monitor.quality import Quality, Scored, assess
from steward_monitor.watching import VersionDrift
from steward_operator import settings as operator_settings
from steward_operator import specs, telemetry
from steward_operator.evidence.prometheus import WINDOW_SERIES
from steward_operator.modes import Live, Release
from steward_operator.planners import plan
from steward_predictor import schemas
from steward_predictor.metrics import HOLDOUT_METRICS, Families, ModelMetrics
from steward_predictor.prediction_log import Reporter
from steward_predictor.settings import Settings
from steward_predictor.streaming import StreamMetrics
from tests.conftest import CHART, REPOSITORY
from tests.support import models

RULES = CHART / "files" / "rules.yaml"
DASHBOARD = CHART / "files" / "dashboard.json"
RULE_TESTS = REPOSITORY / "tests" / "rules" / "steward_test.yaml"
SAMPLES = {sample: family for family in FAMILIES for sample in family.samples}
"""Every series a query may read, and the family it belongs to."""

# --- the contracts themselves ---------------------------------------------------------------------------------------


def test_the_contracts_load_nothing_but_the_standard_library() -> None:
    code = (
        "import sys; before = set(sys.modules); import steward_contracts.metrics, steward_contracts.environment; "
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    packages = {name.split(".")[0] for name in loaded.stdout.split()}
    assert packages - set(sys.stdlib_module_names) == {"steward_contracts"}


def test_family_names_follow_prometheus_conventions_and_are_unique() -> None:
    assert len(SAMPLES) == sum(len(family.samples) for family in FAMILIES)
    for families, part in (
        (PREDICTOR_FAMILIES, "predictor"),
        (STREAM_FAMILIES, "stream"),
        (MONITOR_FAMILIES, "monitor"),
        (OPERATOR_FAMILIES, "operator"),
    ):
        for family in families:
            assert re.fullmatch(rf"steward_{part}_[a-z_]+", family.name), family.name
            assert not family.name.endswith("_total"), "a counter's series get _total; its family's name does not"
            assert len(family.labels) == len(set(family.labels)), family
            assert BUCKET_LABEL not in family.labels, family


def test_a_family_names_only_the_series_it_has() -> None:
    assert PREDICTOR_REQUESTS.samples == ("steward_predictor_requests_total", "steward_predictor_requests_created")
    assert PREDICTOR_REQUESTS.sample("created") == "steward_predictor_requests_created"
    assert Family("steward_predictor_ready", "gauge").samples == ("steward_predictor_ready",)
    assert Family("x_seconds", "histogram").samples == ("x_seconds_bucket", "x_seconds_sum", "x_seconds_count")
    with pytest.raises(ValueError, match="has no series steward_predictor_rows_created"):
        Family("steward_predictor_rows", "counter").sample("created")
    with pytest.raises(ValueError, match="has no series steward_predictor_scores_bucket"):
        PREDICTOR_SCORES.sample("bucket")


# --- each part exports what the contracts name ----------------------------------------------------------------------


def _exported(registry: CollectorRegistry, prefix: str) -> dict[str, Metric]:
    return {metric.name: metric for metric in registry.collect() if metric.name.startswith(prefix)}


def _as_contracted(exported: dict[str, Metric], contracted: tuple[Family, ...]) -> None:
    """Names, kinds and labels as the contracts say, and `<name>_created` for every series of a family whose contract
    says it is published."""
    assert set(exported) == {family.name for family in contracted}
    for family in contracted:
        metric = exported[family.name]
        assert metric.type == family.kind, family.name
        assert metric.samples, f"{family.name}: nothing recorded, so nothing checked"
        for sample in metric.samples:
            assert set(sample.labels) - {BUCKET_LABEL} == set(family.labels), (sample.name, sample.labels)
        if family.created:
            counted = family.sample("total" if family.kind == "counter" else "count")
            assert _series(metric, family.sample("created")) == _series(metric, counted), family.name


def _series(metric: Metric, name: str) -> set[tuple[tuple[str, str], ...]]:
    """The label sets of one family's series called `name`."""
    return {tuple(sorted(sample.labels.items())) for sample in metric.samples if sample.name == name}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> models.Trained:
    """A binary classifier's bundle: it has predictions and scores."""
    return models.breast_cancer(tmp_path_factory.mktemp("bundle"))


def test_the_predictor_exports_what_the_contracts_name(trained: models.Trained) -> None:
    registry = CollectorRegistry()
    metrics = ModelMetrics(Families(registry), "churn", "v2", "challenger")
    metrics.attach(trained.bundle)
    metrics.thresholds({"warn": 0.1})
    metrics.ready.set(1)
    metrics.request("v1", 200)
    metrics.latency.observe(0.01)
    metrics.families.problems.labels(**metrics.base, feature="age", problem="outOfRange", action="counted").inc()
    metrics.observe_outputs(*trained.bundle.predict(trained.x_test))
    reporter = Reporter("http://127.0.0.1:9", model="churn", namespace="ml", registry=registry)
    reporter.close()
    reporter.events.labels("sent").inc(0)
    _as_contracted(_exported(registry, "steward_predictor_"), PREDICTOR_FAMILIES)
    assert HOLDOUT_METRICS == QUALITY_METRICS


def test_a_stream_worker_exports_what_the_contracts_name() -> None:
    registry = CollectorRegistry()
    metrics = StreamMetrics("fraud", ["v1"], registry)
    metrics.behind("payments", 0, 3)
    metrics.transaction("committed")
    _as_contracted(_exported(registry, "steward_stream_"), STREAM_FAMILIES)


def test_the_monitor_exports_what_the_contracts_name() -> None:
    metrics = Metrics()
    version = ("ml", "churn", "v2")
    metrics.show({version: Quality(10, 5, "classifier", {"accuracy": 0.9}, delay_p50=3.0, delay_p90=9.0)})
    drift = FeatureDrift(name="age", psi=0.3, p_value=0.01, samples=500, level="alert")
    metrics.show_drift({version: VersionDrift([drift], ["age"], datetime.now(UTC))})
    metrics.events.labels("prediction", "stored").inc()
    metrics.dropped_versions.labels("drift").inc(0)
    metrics.commit_seconds.observe(0.01)
    metrics.batch_records.observe(10)
    metrics.drift_up.set(1)
    _as_contracted(_exported(metrics.registry, "steward_monitor_"), MONITOR_FAMILIES)


def test_the_operator_exports_what_the_contracts_name() -> None:
    telemetry.observe("ml", "contracts", specs.ModelDeploymentStatus(phase="Stable"))
    telemetry.RECONCILES.labels("ok").inc(0)
    telemetry.DECISIONS.labels("Promoted").inc(0)
    telemetry.RECONCILE_SECONDS.observe(0.1)
    try:
        _as_contracted(_exported(prometheus_client.REGISTRY, "steward_operator_"), OPERATOR_FAMILIES)
    finally:
        telemetry.forget("ml", "contracts")


def test_bundles_the_monitor_and_releases_name_quality_measures_alike() -> None:
    classified = [
        Scored(prediction, score, label, delay=1.0)
        for prediction, score, label in (("yes", 0.9, "yes"), ("no", 0.4, "yes"), ("no", 0.2, "no"), ("yes", 0.6, "no"))
    ]
    regressed = [Scored(1.0, None, 1.5, delay=1.0), Scored(2.0, None, 2.0, delay=1.0)]
    measured = set(assess(classified).metrics) | set(assess(regressed).metrics)
    assert {"accuracy", "rocAuc", "logLoss", "mae", "rmse"} <= measured <= set(LABEL_VALUES["metric"])
    # spec.rollout.validation.metric compares a bundle's held-out results by these names.
    assert get_args(specs.Metric) == QUALITY_METRICS


def test_the_predictor_counts_the_schema_problems_the_rules_filter_on() -> None:
    assert schemas.PROBLEMS == PROBLEMS


# --- the *_created series -------------------------------------------------------------------------------------------


def test_the_provider_reads_the_created_series_of_exactly_the_families_that_publish_them() -> None:
    assert set(WINDOW_SERIES) <= SAMPLES.keys()
    read = {SAMPLES[name] for name in WINDOW_SERIES if name.endswith("_created")}
    assert read == {family for family in PREDICTOR_FAMILIES if family.created}


# --- environment variables ------------------------------------------------------------------------------------------


def test_what_the_operator_sets_in_a_predictors_pod_is_what_the_predictor_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(operator_settings, "MONITOR_URL", "http://steward-monitor.steward-system.svc:8080")
    monkeypatch.setattr(operator_settings, "MONITOR_INGEST_KEY", "s3cret")
    manifest = yaml.safe_load((REPOSITORY / "examples" / "online.yaml").read_text())
    manifest["spec"]["model"]["trustedTypes"] = ["features.Bucket", "features.clean_text"]
    spec = specs.ModelDeploymentSpec.model_validate(manifest["spec"])
    live = Live("2024-06-01", "s3://models/churn/2024-06-01/", "sha256:" + "a" * 64)
    (service,) = plan("churn", "ml", "uid-1", spec, Release(live)).of("InferenceService")
    (container,) = service["spec"]["predictor"]["containers"]
    steward = {item["name"]: item["value"] for item in container["env"] if item["name"].startswith("STEWARD_")}
    assert set(steward) == {
        environment.MODEL_VERSION,
        environment.BUNDLE_DIGEST,
        environment.TRUSTED_TYPES,
        environment.MONITOR_URL,
        environment.MONITOR_TOKEN,
        environment.NAMESPACE,
        *(environment.drift_threshold(name) for name in DRIFT_THRESHOLDS),
    }

    for name in [name for name in os.environ if name.startswith("STEWARD_")]:
        monkeypatch.delenv(name)
    for name, value in steward.items():
        monkeypatch.setenv(name, value)
    read = Settings()
    assert (read.model_version, read.bundle_digest) == (live.version, live.digest)
    assert read.trusted_types == ("features.Bucket", "features.clean_text")
    assert (read.monitor_url, read.namespace) == ("http://steward-monitor.steward-system.svc:8080", "ml")
    assert read.monitor_token == steward[environment.MONITOR_TOKEN]
    assert read.drift_thresholds == {"warn": 0.1, "alert": 0.25, "breaches": 2, "windows": 3, "seconds": 3600}


# --- the alert rules and the dashboard ------------------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"(?<![\w:])(steward_[a-z_]+)(\{[^}]*\})?")
_MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][\w:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}
# A Grafana template variable's query: the values of one label of a series.
_LABEL_VALUES = re.compile(r"label_values\((.*),\s*(\w+)\)")


def _series_read(expression: str) -> set[str]:
    """The names of the series a PromQL expression reads: its identifiers that are neither functions, keywords,
    labels nor inside strings, matchers or ranges."""
    bare = _STRING.sub('""', expression)
    for enclosed in (r"\{[^}]*\}", r"\[[^\]]*\]"):
        bare = re.sub(enclosed, " ", bare)
    bare = _GROUPING.sub(" ", bare)
    return {
        found.group()
        for found in _IDENTIFIER.finditer(bare)
        if found.group() not in _KEYWORDS and not bare[found.end() :].lstrip().startswith("(")
    }


def _problems(expression: str) -> list[str]:
    """What a PromQL expression reads that Steward does not export: a series, a label of a series, a label to
    group or match by that none of the series read has, or a value a label never takes."""
    grouping: set[str] = set()
    variable = _LABEL_VALUES.fullmatch(expression.strip())
    if variable:
        expression = variable[1]
        grouping.add(variable[2])
    names = _series_read(expression)
    found = [f"{name} is no series Steward exports" for name in sorted(names - SAMPLES.keys())]
    for listed in _GROUPING.findall(expression):
        grouping |= {label.strip() for label in listed.split(",") if label.strip()}
    known = {*TARGET_LABELS, *(label for name in names & SAMPLES.keys() for label in SAMPLES[name].labels)}
    if any(name.endswith("_bucket") for name in names):
        known.add(BUCKET_LABEL)
    found += [f"none of {sorted(names)} has the label {label}" for label in sorted(grouping - known)]
    for name, braces in _SELECTOR.findall(expression):
        for label, operator, value in _MATCHER.findall(braces):
            found += _matcher_problems(name, label, operator, value)
    return found


def _matcher_problems(name: str, label: str, operator: str, value: str) -> list[str]:
    family = SAMPLES.get(name)
    if family is None:
        return []
    labels = {*family.labels, *TARGET_LABELS, *([BUCKET_LABEL] if name.endswith("_bucket") else [])}
    if label not in labels:
        return [f"{name} has no label {label}"]
    taken = LABEL_VALUES.get(label)
    pattern = operator in {"=~", "!~"}
    # A Grafana variable, or a regular expression other than a list of alternatives, is not checked.
    if taken is None or value.startswith("$") or (pattern and not re.fullmatch(r"[\w|]+", value)):
        return []
    values = value.split("|") if pattern else [value]
    return [f'{name}{{{label}{operator}"{value}"}}: {label} is never {one!r}' for one in values if one not in taken]


def _expressions(node: Any) -> Iterator[str]:
    """Every query in a Grafana dashboard: panel targets (in rows too) and template variable definitions."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"expr", "definition"} and isinstance(value, str):
                yield value
            else:
                yield from _expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from _expressions(item)


def _rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_the_query_reader_finds_what_a_query_reads() -> None:
    expression = (
        'sum by (namespace, feature) (rate(steward_predictor_feature_problems_total{problem="outOfRange"}[1h]))\n'
        "/ on (namespace) group_left sum by (namespace) (rate(steward_predictor_rows_total[1h])) > 0.01"
    )
    assert _series_read(expression) == {"steward_predictor_feature_problems_total", "steward_predictor_rows_total"}
    assert _problems(expression) == []
    assert _problems("rate(up[5m])") == ["up is no series Steward exports"]
    assert _problems("rate(steward_predictor_requests[5m])") == [
        "steward_predictor_requests is no series Steward exports"
    ]
    assert _problems('steward_predictor_feature_problems_total{action="reject"}') == [
        "steward_predictor_feature_problems_total{action=\"reject\"}: action is never 'reject'"
    ]
    assert _problems('steward_monitor_quality{metric=~"accuracy|auc"}') == [
        "steward_monitor_quality{metric=~\"accuracy|auc\"}: metric is never 'auc'"
    ]
    assert _problems("sum by (bin) (steward_predictor_rows_total)") == [
        "none of ['steward_predictor_rows_total'] has the label bin"
    ]
    assert _problems('steward_predictor_ready{le="1"}') == ["steward_predictor_ready has no label le"]
    assert _problems("label_values(steward_predictor_ready, namespace)") == []
    assert _problems("label_values(steward_predictor_ready, bin)") == [
        "none of ['steward_predictor_ready'] has the label bin"
    ]


def test_alerts_and_the_dashboard_query_only_what_steward_exports() -> None:
    """The rules and the dashboard read Steward's own series alone: no Prometheus, KServe or gateway series."""
    rules = _rules()
    for rule in rules:
        assert _problems(rule["expr"]) == [], rule["alert"]
    queries = list(_expressions(json.loads(DASHBOARD.read_text())))
    for query in queries:
        assert _problems(query) == [], query
    assert len({SAMPLES[name] for query in queries for name in _series_read(query) if name in SAMPLES}) >= 10
    alerts = [rule["alert"] for rule in rules]
    assert len(alerts) == len(set(alerts))
    assert all(rule["labels"]["severity"] in {"info", "warning", "critical"} for rule in rules)


def test_the_rules_unit_tests_feed_series_as_steward_exports_them() -> None:
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for given in test["input_series"]:
            name, braces = re.fullmatch(r"(\w+)(\{.*\})?", given["series"]).groups()  # type: ignore[union-attr]
            assert name in SAMPLES, given["series"]
            for label, operator, value in _MATCHER.findall(braces or ""):
                assert _matcher_problems(name, label, operator, value) == [], given["series"]
