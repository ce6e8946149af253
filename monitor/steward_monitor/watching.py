"""Watching live traffic for drift: every window, the predictors' bin counts (through Prometheus) against their
training shares, per model version, judged by `drifting`, and kept for the persistence rule."""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import aiohttp

from steward_contracts.metrics import (
    PREDICTION_FEATURE,
    PREDICTOR_DRIFT_THRESHOLD,
    PREDICTOR_FEATURE_TRAINING_SHARE,
    PREDICTOR_FEATURE_VALUES,
    PREDICTOR_PREDICTION_TRAINING_SHARE,
    PREDICTOR_PREDICTIONS,
)
from steward_monitor.drifting import FeatureDrift, Level, Thresholds, persistent, window

logger = logging.getLogger(__name__)

LOOK_SECONDS = 60.0
"""Steps come at least this often, whatever the windows: each reads which versions exist and what they ask for."""

Version = tuple[str, str, str]
"""(namespace, model, version)"""


class PrometheusUnavailableError(RuntimeError):
    """Prometheus could not be read: no data, which is never reported as no drift."""


@dataclass(frozen=True)
class VersionDrift:
    """One version's features (and predictions) in the latest window, and which of them alert after persistence."""

    features: list[FeatureDrift]
    alerting: list[str]
    time: datetime


@dataclass
class DriftWatch:
    """Reads Prometheus at `url` and keeps the last levels of every feature. `thresholds` apply to versions whose
    predictors publish none of their own (PREDICTOR_DRIFT_THRESHOLD, from spec.monitoring.drift), the length of
    their windows among them: each version is judged when its own window ends."""

    url: str
    thresholds: Thresholds
    latest: dict[Version, VersionDrift] = field(default_factory=dict)
    _history: dict[tuple[Version, str], deque[Level]] = field(default_factory=dict)
    _began: dict[Version, float] = field(default_factory=dict)
    """When each version's current window began (monotonic seconds): when it was first seen, then when its last
    window was judged."""
    _windows: set[float] | None = None
    """The window lengths versions asked for at the last step; None before the first."""

    def tick(self) -> float:
        """Seconds until the next step: at once for the first (which learns the versions and their windows), then
        the shortest window any version asks for, and at most LOOK_SECONDS, so a new version (perhaps with a
        shorter window) is seen soon."""
        if self._windows is None:
            return 1.0
        return max(1.0, min({self.thresholds.seconds, LOOK_SECONDS, *self._windows}))

    async def step(self, now: float | None = None) -> dict[Version, VersionDrift]:
        """Judge the versions whose window just ended, each over its own window; returns what is known of every
        version that still publishes its training shares. Raises PrometheusUnavailableError."""
        now = time.monotonic() if now is None else now
        shares = await self._vector(
            PREDICTOR_FEATURE_TRAINING_SHARE.name, ("namespace", "model", "version", "feature", "bin")
        )
        for key, value in (
            await self._vector(PREDICTOR_PREDICTION_TRAINING_SHARE.name, ("namespace", "model", "version", "bin"))
        ).items():
            shares[(*key[:3], PREDICTION_FEATURE, key[3])] = value
        asked = await self._vector(PREDICTOR_DRIFT_THRESHOLD.name, ("namespace", "model", "version", "threshold"))
        present: set[Version] = {(key[0], key[1], key[2]) for key in shares}
        thresholds = {version: self._thresholds(version, asked) for version in present}
        self._windows = {own.seconds for own in thresholds.values()}
        # A version's first window begins when it is first seen. A little early counts as due: a step that wakes a
        # moment before a window ends does not wait a whole tick.
        due = {
            version
            for version in present
            if now - self._began.setdefault(version, now) >= thresholds[version].seconds - 0.5
        }
        counts: dict[tuple[str, ...], float] = {}
        for seconds in sorted({thresholds[version].seconds for version in due}):
            counts.update(
                await self._counts(seconds, {version for version in due if thresholds[version].seconds == seconds})
            )
        wall = datetime.now(UTC)
        for version, (baselines, observed) in _by_version(shares, counts).items():
            if version not in due:
                continue
            own = thresholds[version]
            features = window(baselines, observed, own)
            alerting = []
            for feature in features:
                levels = self._history.get((version, feature.name))
                if levels is None or levels.maxlen != own.windows:
                    levels = self._history[(version, feature.name)] = deque(levels or (), maxlen=own.windows)
                levels.append(feature.level)
                if persistent(levels, own):
                    alerting.append(feature.name)
            self.latest[version] = VersionDrift(features, alerting, wall)
            self._began[version] = now
        # A version that is gone keeps no history.
        for stale in [held for held in self._history if held[0] not in present]:
            del self._history[stale]
        for gone in [version for version in [*self.latest, *self._began] if version not in present]:
            self.latest.pop(gone, None)
            self._began.pop(gone, None)
        return dict(self.latest)

    async def _counts(self, seconds: float, versions: set[Version]) -> dict[tuple[str, ...], float]:
        """What `versions` saw over the last `seconds`, per feature (and the predictions) and bin."""
        span = f"{max(1, round(seconds))}s"
        by_bin = "sum by (namespace, model, version, feature, bin)"
        found = await self._vector(
            f"{by_bin} (increase({PREDICTOR_FEATURE_VALUES.sample('total')}[{span}]))",
            ("namespace", "model", "version", "feature", "bin"),
        )
        for key, value in (
            await self._vector(
                f"sum by (namespace, model, version, bin) (increase({PREDICTOR_PREDICTIONS.sample('total')}[{span}]))",
                ("namespace", "model", "version", "bin"),
            )
        ).items():
            found[(*key[:3], PREDICTION_FEATURE, key[3])] = value
        return {key: value for key, value in found.items() if key[:3] in versions}

    def _thresholds(self, version: Version, asked: dict[tuple[str, ...], float]) -> Thresholds:
        """The thresholds the version's ModelDeployment asks for (its predictors publish them), else the monitor's."""
        own = {key[3]: value for key, value in asked.items() if key[:3] == version}
        default = self.thresholds
        return replace(
            default,
            warn=own.get("warn", default.warn),
            alert=own.get("alert", default.alert),
            breaches=round(own.get("breaches", default.breaches)),
            windows=round(own.get("windows", default.windows)),
            seconds=own.get("seconds", default.seconds),
        )

    async def _vector(self, query: str, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
                session.post(f"{self.url.rstrip('/')}/api/v1/query", data={"query": query}) as response,
            ):
                body: Any = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as error:
            raise PrometheusUnavailableError(f"Prometheus at {self.url}: {error!r}") from error
        if not isinstance(body, dict) or body.get("status") != "success":
            raise PrometheusUnavailableError(f"Prometheus at {self.url} refused {query!r}: {body}")
        found = {}
        for item in body["data"]["result"]:
            metric = item["metric"]
            found[tuple(metric.get(label, "") for label in labels)] = float(item["value"][1])
        return found


def _by_version(
    shares: dict[tuple[str, ...], float], counts: dict[tuple[str, ...], float]
) -> dict[Version, tuple[dict[str, list[float]], dict[str, list[int]]]]:
    """Per version: each feature's training shares and live counts, over the same bins in the same order."""
    bins: dict[Version, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for (namespace, model, version, feature, label), share in shares.items():
        bins[(namespace, model, version)][feature][label] = share
    grouped = {}
    for key, features in bins.items():
        baselines, observed = {}, {}
        for feature, by_label in features.items():
            labels = sorted(by_label, key=_bin_order)
            baselines[feature] = [by_label[label] for label in labels]
            observed[feature] = [round(counts.get((*key, feature, label), 0.0)) for label in labels]
        grouped[key] = (baselines, observed)
    return grouped


def _bin_order(label: str) -> tuple[int, int, str]:
    return (0, int(label), "") if label.isdigit() else (1, 0, label)
