"""The operator's settings, read once from its environment (the Helm chart sets them)."""

from __future__ import annotations

import os
from pathlib import Path

PREDICTOR_IMAGE = os.environ.get("STEWARD_PREDICTOR_IMAGE", "ghcr.io/steward-dev/predictor:0.1.0")
"""Image of the predictor every InferenceService and batch CronJob runs (predictor/Dockerfile)."""
PREDICTOR_PORT = int(os.environ.get("STEWARD_PREDICTOR_PORT", "8080"))
"""Port the predictor listens on, and Prometheus scrapes."""
NAMESPACES = [name for name in os.environ.get("STEWARD_NAMESPACES", "").split(",") if name]
"""Namespaces whose ModelDeployments the operator serves, comma-separated; empty for all of them."""
METRICS_PORT = int(os.environ.get("STEWARD_METRICS_PORT", "9090"))
"""Port of the operator's own Prometheus metrics (/metrics)."""
HEALTH_PORT = int(os.environ.get("STEWARD_HEALTH_PORT", "8081"))
"""Port of the liveness endpoint (/healthz) the Deployment's probes call."""
RESYNC_SECONDS = float(os.environ.get("STEWARD_RESYNC_SECONDS", "60"))
"""How often every ModelDeployment is reconciled even when nothing about it changed."""
PROMETHEUS_URL = os.environ.get("STEWARD_PROMETHEUS_URL", "http://prometheus-operated.monitoring.svc:9090")
"""Base URL of the Prometheus HTTP API that scrapes the predictors, read for every release decision. Empty: no
automatic decisions; releases move only on `kubectl steward` commands."""
MONITOR_URL = os.environ.get("STEWARD_MONITOR_URL", "")
"""Base URL of the monitor the predictors report every prediction to; empty: they report none."""
MONITOR_INGEST_KEY_FILE = os.environ.get("STEWARD_MONITOR_INGEST_KEY_FILE", "")
"""File holding the monitor's ingest key (the chart mounts the monitor's Secret). Each ModelDeployment's predictors
get a token derived from it, valid for that ModelDeployment's predictions only; empty: they get none, and the
monitor refuses their reports."""
MONITOR_INGEST_KEY = Path(MONITOR_INGEST_KEY_FILE).read_text().strip() if MONITOR_INGEST_KEY_FILE else ""
