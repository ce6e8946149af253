"""The per-version gauges the monitor exports are bounded: beyond the cap, the versions seen least recently (drift:
with the least traffic in the window) are left out of /metrics, and each one left out is counted once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import prometheus_client

from steward_monitor.drifting import FeatureDrift
from steward_monitor.exporting import Metrics
from steward_monitor.quality import Quality
from steward_monitor.watching import VersionDrift

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def _series(metrics: Metrics, family: str) -> set[tuple[str, ...]]:
    exposition = prometheus_client.generate_latest(metrics.registry).decode()
    return {
        tuple(sorted(part.split('="')[1].rstrip('"') for part in line.split("{", 1)[1].split("}")[0].split(",")))
        for line in exposition.splitlines()
        if line.startswith(f"{family}{{")
    }


def _dropped(metrics: Metrics, gauges: str) -> float | None:
    return metrics.registry.get_sample_value("steward_monitor_dropped_versions_total", {"gauges": gauges})


def test_the_versions_seen_last_are_kept_and_each_left_out_is_counted_once() -> None:
    metrics = Metrics(max_versions=3)
    seen = {("ml", "churn", f"v{index}"): NOW - timedelta(minutes=index) for index in range(10)}
    assert metrics.newest("quality", seen) == {("ml", "churn", "v0"), ("ml", "churn", "v1"), ("ml", "churn", "v2")}
    assert _dropped(metrics, "quality") == 7
    assert len(metrics.newest("quality", seen)) == 3
    assert _dropped(metrics, "quality") == 7  # The same ones, still left out: not counted again.
    seen[("ml", "churn", "v9")] = NOW + timedelta(minutes=1)  # Seen again: it is back, and v2 leaves.
    assert metrics.newest("quality", seen) == {("ml", "churn", "v9"), ("ml", "churn", "v0"), ("ml", "churn", "v1")}
    assert _dropped(metrics, "quality") == 8
    assert _dropped(metrics, "drift") is None  # Each family of gauges counts its own.


def test_the_quality_gauges_show_only_what_they_are_given() -> None:
    metrics = Metrics(max_versions=2)
    metrics.show({("ml", "churn", "v1"): Quality(predictions=10, labelled=5, kind="classifier")})
    metrics.show({("ml", "churn", "v2"): Quality(predictions=3, labelled=0, kind="classifier")})
    assert _series(metrics, "steward_monitor_predictions") == {("churn", "ml", "v2")}


def test_the_drift_gauges_keep_the_busiest_versions() -> None:
    metrics = Metrics(max_versions=2)
    judged = {
        ("ml", "churn", f"v{index}"): VersionDrift(
            [FeatureDrift(name="age", psi=0.01, p_value=0.5, samples=samples, level="ok")], [], NOW
        )
        for index, samples in enumerate([5, 500, 50, 0])
    }
    metrics.show_drift(judged)
    assert _series(metrics, "steward_monitor_drift_psi") == {("age", "churn", "ml", "v1"), ("age", "churn", "ml", "v2")}
    assert _dropped(metrics, "drift") == 2
