"""The operator's settings, read once from its environment (the Helm chart sets them)."""

from __future__ import annotations

import os

PREDICTOR_IMAGE = os.environ.get("STEWARD_PREDICTOR_IMAGE", "ghcr.io/steward-dev/predictor:0.1.0")
"""Image of the predictor every InferenceService runs (predictor/Dockerfile)."""
PREDICTOR_PORT = int(os.environ.get("STEWARD_PREDICTOR_PORT", "8080"))
"""Port the predictor listens on, and Prometheus scrapes."""
