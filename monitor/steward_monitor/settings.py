"""The monitor's settings, read once from its environment (the Helm chart sets them); flags override them."""

from __future__ import annotations

import os

_YES = {"1", "true", "yes"}

STORE = os.environ.get("STEWARD_MONITOR_STORE", "sqlite:///steward-monitor.db")
"""SQLAlchemy URL of the store: SQLite (a file; the default) or PostgreSQL (postgresql+psycopg://...)."""
PORT = int(os.environ.get("STEWARD_MONITOR_PORT", "8080"))
"""Port of the HTTP API, /healthz and /metrics."""
TOKEN_FILE = os.environ.get("STEWARD_MONITOR_TOKEN_FILE", "")
"""File holding the bearer token outcome senders must present (a mounted Secret); empty: outcomes refused."""
INGEST_KEY_FILE = os.environ.get("STEWARD_MONITOR_INGEST_KEY_FILE", "")
"""File holding the key predictor tokens are derived from (a mounted Secret); empty: predictions refused."""
ACCEPT_UNAUTHENTICATED_EVENTS = os.environ.get("STEWARD_MONITOR_ACCEPT_UNAUTHENTICATED_EVENTS", "").lower() in _YES
"""Take KServe payload-logger CloudEvents, which carry no credentials: anyone who reaches the monitor can then
write predictions for any model."""
MAX_CLOCK_SKEW_SECONDS = float(os.environ.get("STEWARD_MONITOR_MAX_CLOCK_SKEW_SECONDS", "300"))
"""Records timed further than this ahead of the monitor's clock are refused."""
MAX_RECORDS = int(os.environ.get("STEWARD_MONITOR_MAX_RECORDS", "100000"))
"""Most records one request may carry: events, outcomes or the rows of an uploaded table."""
MAX_EXPORTED_VERSIONS = int(os.environ.get("STEWARD_MONITOR_MAX_EXPORTED_VERSIONS", "500"))
"""Most model versions with gauges on /metrics; beyond it, the least recently seen are left out."""
RETENTION_DAYS = float(os.environ.get("STEWARD_MONITOR_RETENTION_DAYS", "180"))
"""Predictions and outcomes older than this many days are deleted, hourly."""
QUALITY_WINDOW_DAYS = float(os.environ.get("STEWARD_MONITOR_QUALITY_WINDOW_DAYS", "30"))
"""The quality gauges cover the predictions of this many days (and the outcomes that have arrived for them)."""
QUALITY_INTERVAL_SECONDS = float(os.environ.get("STEWARD_MONITOR_QUALITY_INTERVAL_SECONDS", "60"))
"""How often the quality gauges are recomputed."""
PROMETHEUS_URL = os.environ.get("STEWARD_MONITOR_PROMETHEUS_URL", "")
"""The Prometheus that scrapes the predictors, read for drift; empty: no drift is computed."""
DRIFT_WINDOW_SECONDS = float(os.environ.get("STEWARD_MONITOR_DRIFT_WINDOW_SECONDS", "3600"))
"""Length of a drift window (spec.monitoring.drift.window's default)."""
