"""The monitor's settings, read once from its environment (the Helm chart sets them); flags override them."""

from __future__ import annotations

import os

STORE = os.environ.get("STEWARD_MONITOR_STORE", "sqlite:///steward-monitor.db")
"""SQLAlchemy URL of the store: SQLite (a file; the default) or PostgreSQL (postgresql+psycopg://...)."""
PORT = int(os.environ.get("STEWARD_MONITOR_PORT", "8080"))
"""Port of the HTTP API, /healthz and /metrics."""
TOKEN_FILE = os.environ.get("STEWARD_MONITOR_TOKEN_FILE", "")
"""File holding the bearer token outcome senders must present (a mounted Secret); empty: outcomes refused."""
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
