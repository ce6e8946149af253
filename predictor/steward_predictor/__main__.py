"""python -m steward_predictor: serve a Steward bundle with KServe's model server."""

from __future__ import annotations

import argparse
import gc
import logging
import struct
from collections.abc import Awaitable, Callable

import kserve
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve import model_server
from kserve.errors import InferenceError, InvalidInput, ModelNotFound, ModelNotReady
from kserve.utils.utils import strtobool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from steward_predictor.metrics import Families
from steward_predictor.model import EXCHANGE, Exchange, StewardModel
from steward_predictor.prediction_log import Reporter
from steward_predictor.settings import VARIANTS, Settings

logger = logging.getLogger("steward.predictor")
# What KServe raises on a body it cannot make sense of (a V2 binary body cut short, a header that is not a number,
# a tensor that does not fit its shape). Raised before Steward's scoring began, they are the client's mistake; after,
# the server's own failure.
MALFORMED: tuple[type[Exception], ...] = (
    InferenceError,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    struct.error,
)
# A refusal is logged in one line, and at most this long: the client chose what the message echoes.
LOGGED_CHARACTERS = 500


def parser() -> argparse.ArgumentParser:
    try:
        defaults = Settings()
    except ValueError as error:
        raise SystemExit(f"steward_predictor: {error}") from None
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
    extended.add_argument(
        "--max_body_bytes",
        type=_positive,
        default=defaults.max_body_bytes,
        help="refuse (413) a request body larger than this, before reading it whole (env STEWARD_MAX_BODY_BYTES; "
        "default %(default)s)",
    )
    extended.add_argument(
        "--max_rows",
        type=_positive,
        default=defaults.max_rows,
        help="refuse (400) a request of more rows than this (env STEWARD_MAX_ROWS; default %(default)s)",
    )
    extended.add_argument(
        "--enable_grpc",
        type=strtobool,
        default=False,
        help="also serve KServe's gRPC endpoint, which neither the body cap nor the request metrics cover "
        "(default: false)",
    )
    return extended


def _positive(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


class BodyTooLargeError(Exception):
    """A request body over --max_body_bytes."""


class HttpEdge:
    """Every HTTP request passes here before KServe sees it: a body over the cap is refused (413) before it is read
    whole, and each prediction request is followed (EXCHANGE) and its answer counted, whichever layer gave it."""

    def __init__(self, app: ASGIApp, model: StewardModel, max_body_bytes: int) -> None:
        self.app = app
        self.model = model
        self.max_body_bytes = max_body_bytes
        self._v1 = f"/v1/models/{model.name}:predict"
        self._v2 = f"/v2/models/{model.name}/"

    def protocol(self, path: str) -> str | None:
        """v1 or v2 for the model's prediction paths (/infer and /versions/N/infer), None for any other."""
        if path == self._v1:
            return "v1"
        if path.startswith(self._v2) and path.endswith("/infer"):
            return "v2"
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        protocol = self.protocol(scope["path"])
        status = 0

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = EXCHANGE.set(Exchange()) if protocol else None
        try:
            body = await self._body(scope, receive)
            if body is not None:
                await self.app(scope, _replaying(body, receive), answer)
        except BodyTooLargeError as error:
            await _refused(scope["method"], scope["path"], 413, str(error))(scope, receive, answer)
        except Exception:
            status = status or 500
            raise
        finally:
            if token is not None:
                EXCHANGE.reset(token)
            if protocol and status:
                self.model.count(protocol, status)

    async def _body(self, scope: Scope, receive: Receive) -> bytes | None:
        """The whole body, refused as soon as it is known to be over the cap; None if the client went away."""
        cap = self.max_body_bytes
        announced = dict(scope["headers"]).get(b"content-length", b"")
        if announced.isdigit() and int(announced) > cap:
            raise BodyTooLargeError(f"the request body is {int(announced)} bytes; {_at_most(cap)}")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cap:
                raise BodyTooLargeError(f"the request body is over {cap} bytes; {_at_most(cap)}")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


def _at_most(cap: int) -> str:
    return f"at most {cap} bytes are accepted (--max_body_bytes, STEWARD_MAX_BODY_BYTES)"


def _replaying(body: bytes, receive: Receive) -> Receive:
    """The body as one message, then whatever the client sends next (a disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _refused(method: str, path: str, status: int, message: str) -> JSONResponse:
    """A client's mistake: answered with what was wrong, logged in one line."""
    logged = " ".join(message.split())[:LOGGED_CHARACTERS]
    logger.info("refused %s %s with %d: %s", method, path, status, logged)
    return JSONResponse(status_code=status, content={"error": message})


async def _client_mistake(request: Request, error: Exception) -> JSONResponse:
    """A request refused by Steward's checks or by KServe's own (no such model, not ready, a body it cannot
    decode): the status it deserves, and one log line rather than a traceback."""
    statuses = {InvalidInput: 400, ModelNotFound: 404, ModelNotReady: 503}
    status = next(code for kind, code in statuses.items() if isinstance(error, kind))
    return _refused(request.method, request.url.path, status, str(error))


async def _request_not_understood(request: Request, error: Exception) -> JSONResponse:
    """A V2 body that does not match the Open Inference schema. FastAPI's own handler echoes the offending
    input back, and fails with a 500 when that input is not valid JSON (Infinity, NaN); say what is wrong
    without echoing it."""
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    text = "; ".join(
        f"{'.'.join(str(part) for part in problem.get('loc', ()))}: {problem.get('msg', 'invalid')}"
        for problem in problems[:20]
    )
    return _refused(request.method, request.url.path, 422, f"invalid request: {text or error}")


async def _failed(request: Request, error: Exception) -> JSONResponse:
    """A failure while a request was decoded is the client's (400); one while it was scored, or outside any
    prediction request, is the server's own (500, logged with its traceback)."""
    exchange = EXCHANGE.get()
    if exchange is not None and not exchange.scoring:
        return _refused(request.method, request.url.path, 400, f"malformed request: {_named(error)}: {error}")
    where = f"request {exchange.request_id}" if exchange is not None else f"{request.method} {request.url.path}"
    logger.error("%s failed", where, exc_info=error)
    return JSONResponse(status_code=500, content={"error": f"{_named(error)}: {error}"})


def _named(error: Exception) -> str:
    kind = type(error)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def _steward_answers_errors(app: FastAPI) -> Callable[[], Awaitable[None]]:
    """KServe registers its exception handlers as the server starts, over any registered before it, and they log a
    traceback for every client mistake and answer a malformed binary body with a 500. Steward's handlers go in once
    the app has started, and the app builds its middleware again, with them, on the next request."""

    async def install() -> None:
        handlers: dict[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
            InvalidInput: _client_mistake,
            ModelNotFound: _client_mistake,
            ModelNotReady: _client_mistake,
            RequestValidationError: _request_not_understood,
            **dict.fromkeys(MALFORMED, _failed),
        }
        for kind, handler in handlers.items():
            app.add_exception_handler(kind, handler)
        app.middleware_stack = None

    return install


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
        max_body_bytes=args.max_body_bytes,
        max_rows=args.max_rows,
    )
    # The server configures KServe's logging; Steward's lines go out the same way.
    server = kserve.ModelServer(enable_grpc=args.enable_grpc)
    steward = logging.getLogger("steward")
    steward.handlers, steward.propagate = logging.getLogger("kserve").handlers, False
    steward.setLevel(logging.getLogger("kserve").level)
    reporter = None
    if settings.monitor_url:
        reporter = Reporter(
            settings.monitor_url, model=args.model_name, namespace=settings.namespace, token=settings.monitor_token
        )
    model = StewardModel(args.model_name, settings, Families(), reporter)
    model.load()
    # Everything loaded so far (libraries, the pipeline) lives as long as the process: keep the garbage
    # collector from walking it again on every full collection while requests are served.
    gc.collect()
    gc.freeze()
    # A large request allocates containers by the million, and at the default threshold the collections they set off
    # walk them all again and again, holding the GIL (and so the event loop) for up to a second: collect the
    # youngest generation after 50,000 allocations instead of 700.
    gc.set_threshold(50_000)
    app = model_server.app
    app.add_middleware(HttpEdge, model=model, max_body_bytes=settings.max_body_bytes)
    app.router.add_event_handler("startup", _steward_answers_errors(app))
    # Registered even when not ready: the server answers with the reason instead of exiting.
    server.register_model(model)
    server.start([])


if __name__ == "__main__":
    main()
