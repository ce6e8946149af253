"""steward-operator: run the operator (kopf) against the cluster of the service account or the kubeconfig."""

from __future__ import annotations

import argparse
import asyncio
import importlib
from collections.abc import Sequence

import kopf

from steward_operator import settings


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="steward-operator",
        description="Reconcile ModelDeployments (steward.dev/v1alpha1) into KServe InferenceServices, traffic "
        "routes and CronJobs, and carry releases through validation, shadow and canary.",
        epilog="Settings come from the environment: STEWARD_PREDICTOR_IMAGE, STEWARD_NAMESPACES, "
        "STEWARD_METRICS_PORT, STEWARD_HEALTH_PORT, STEWARD_RESYNC_SECONDS (see steward_operator/settings.py).",
    )
    root.add_argument(
        "--namespace",
        action="append",
        default=list(settings.NAMESPACES),
        metavar="NAME",
        help="serve only this namespace, or those matching this glob (team-*); repeatable "
        "(default: STEWARD_NAMESPACES, else all namespaces)",
    )
    root.add_argument("--verbose", action="store_true", help="log every API request and handler step")
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    kopf.configure(verbose=args.verbose)
    namespaces = list(dict.fromkeys(args.namespace))
    importlib.import_module("steward_operator.handlers")  # its @kopf decorators register the handlers
    asyncio.run(
        kopf.operator(
            standalone=True,  # One replica (the chart's Recreate strategy); no peering objects to manage.
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=f"http://0.0.0.0:{settings.HEALTH_PORT}/healthz",
            memo=kopf.Memo(namespaces=namespaces),
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
