"""python -m steward_predictor: serve a Steward bundle with KServe's model server."""

from __future__ import annotations

import argparse
import gc
import logging

import kserve
import prometheus_client
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import model_server

from steward_predictor.metrics import Families
from steward_predictor.model import StewardModel
from steward_predictor.reporting import Reporter
from steward_predictor.settings import VARIANTS, Settings

logger = logging.getLogger("steward.predictor")


def parser() -> argparse.ArgumentParser:
    defaults = Settings()
    extended = argparse.ArgumentParser(
        parents=[model_server.parser],
        description="Serve a Steward model bundle over KServe's V1 and V2 (Open Inference) protocols. The model "
        "stays not-ready, with the reason on /v1/models/NAME and /v2/models/NAME/ready, until the bundle's digest, "
        "version and golden examples check out.",
        conflict_handler="resolve",
    )
    extended.add_argument(
        "--model_dir",
        default=defaults.bundle_uri,
        help="bundle path or URI (env STEWARD_BUNDLE_URI; default %(default)s)",
    )
    extended.add_argument(
        "--bundle_digest", default=defaults.bundle_digest, help="required sha256 digest (env STEWARD_BUNDLE_DIGEST)"
    )
    extended.add_argument(
        "--model_version", default=defaults.model_version, help="required model version (env STEWARD_MODEL_VERSION)"
    )
    extended.add_argument(
        "--variant", default=defaults.variant, choices=VARIANTS, help="role in a release (env STEWARD_VARIANT)"
    )
    extended.add_argument(
        "--allow_pickle",
        action="store_true",
        default=defaults.allow_pickle,
        help="load a pickled pipeline; it can run any code (env STEWARD_ALLOW_PICKLE)",
    )
    extended.add_argument(
        "--monitor_url",
        default=defaults.monitor_url,
        help="report every prediction to the monitor at this base URL (env STEWARD_MONITOR_URL; default: none)",
    )
    extended.add_argument(
        "--trust_type",
        action="append",
        default=list(defaults.trusted_types),
        help="a type the skops pipeline may contain beyond scikit-learn's; repeatable (env STEWARD_TRUSTED_TYPES)",
    )
    return extended


async def _request_not_understood(_: Request, error: Exception) -> JSONResponse:
    """A V2 body that does not match the Open Inference schema. FastAPI's own handler echoes the offending
    input back, and fails with a 500 when that input is not valid JSON (Infinity, NaN); say what is wrong
    without echoing it."""
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    text = "; ".join(
        f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', 'invalid')}"
        for problem in problems[:20]
    )
    return JSONResponse(status_code=422, content={"error": f"invalid request: {text or error}"})


def main() -> None:
    args, _ = parser().parse_known_args()
    settings = Settings(
        bundle_uri=args.model_dir,
        bundle_digest=args.bundle_digest,
        model_version=args.model_version,
        variant=args.variant,
        allow_pickle=args.allow_pickle,
        trusted_types=tuple(args.trust_type),
        monitor_url=args.monitor_url,
    )
    # The *_created series double every family's size and no Steward query reads them.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    reporter = None
    if settings.monitor_url:
        reporter = Reporter(settings.monitor_url, model=args.model_name, namespace=settings.namespace)
    model = StewardModel(args.model_name, settings, Families(), reporter)
    model.load()
    # Everything loaded so far (libraries, the pipeline) lives as long as the process: keep the garbage
    # collector from walking it again on every full collection while requests are served.
    gc.collect()
    gc.freeze()
    model_server.app.add_exception_handler(RequestValidationError, _request_not_understood)
    server = kserve.ModelServer()
    # Registered even when not ready: the server answers with the reason instead of exiting.
    server.register_model(model)
    server.start([])


if __name__ == "__main__":
    main()
