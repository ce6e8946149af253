"""A small gateway standing in for the mesh: it routes requests the way an HTTPRoute says, by backend weight,
and copies a share of them to the RequestMirror backend, whose answers are discarded."""

from __future__ import annotations

import http.client
import random
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from steward_harness.dataplane import DataPlane
from steward_harness.servers import Server, free_ports

SUFFIX = "-predictor"  # KServe names an InferenceService's predictor Service <name>-predictor.


@dataclass
class Gateway(Server):
    """POST http://127.0.0.1:<port>/<namespace>/<route>/<path> goes to <path> on a backend of that HTTPRoute,
    chosen by weight; the answer carries `x-steward-backend`. Backends are the data plane's predictor
    processes."""

    data_plane: DataPlane
    seed: int = 0
    port: int = 0
    _server: ThreadingHTTPServer | None = field(default=None, init=False)
    _mirrors: ThreadPoolExecutor | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Gateway:
        self.port = self.port or free_ports(1)[0]
        chooser = random.Random(self.seed)  # noqa: S311 -- traffic splitting, not secrets
        lock = threading.Lock()
        mirrors = self._mirrors = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mirror")
        plane = self.data_plane

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                namespace, route_name, path = _split(self.path)
                route = plane.routes.get((namespace, route_name))
                if route is None:
                    self._answer(404, b'{"error": "no such route"}', {})
                    return
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                # Like Envoy at the edge: one request id, passed to the backend and to the mirror alike, so the two
                # answers to the same request can be paired.
                headers = {
                    "content-type": self.headers.get("content-type", "application/json"),
                    "x-request-id": self.headers.get("x-request-id") or uuid.uuid4().hex,
                }
                rule = route["spec"]["rules"][0]
                with lock:
                    backend = _weighted(rule["backendRefs"], chooser)
                    mirror = _mirror(rule, chooser)
                if mirror is not None and (target := _url(plane, namespace, mirror)):
                    mirrors.submit(_forward, target, path, body, headers)
                target = _url(plane, namespace, backend)
                if target is None:
                    self._answer(503, b'{"error": "backend not running"}', {})
                    return
                status, answer, answer_headers = _forward(target, path, body, headers)
                self._answer(status, answer, {**answer_headers, "x-steward-backend": backend})

            def _answer(self, status: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in {"content-length", "transfer-encoding", "connection", "date", "server"}:
                        self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, name="gateway", daemon=True).start()
        return self

    def stop(self, keep: bool = False) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._mirrors is not None:
            self._mirrors.shutdown(wait=False, cancel_futures=True)


def _split(path: str) -> tuple[str, str, str]:
    parts = path.lstrip("/").split("/", 2)
    parts += [""] * (3 - len(parts))
    return parts[0], parts[1], "/" + parts[2]


def _weighted(backends: list[dict[str, Any]], chooser: random.Random) -> str:
    total = sum(backend.get("weight", 1) for backend in backends)
    pick = chooser.uniform(0, total)
    for backend in backends:
        pick -= backend.get("weight", 1)
        if pick <= 0 and backend.get("weight", 1) > 0:
            return str(backend["name"])
    return str(next(backend["name"] for backend in backends if backend.get("weight", 1) > 0))


def _mirror(rule: dict[str, Any], chooser: random.Random) -> str | None:
    for item in rule.get("filters", []):
        if item.get("type") == "RequestMirror":
            mirror = item["requestMirror"]
            if chooser.uniform(0, 100) < mirror.get("percent", 100):
                return str(mirror["backendRef"]["name"])
    return None


def _url(plane: DataPlane, namespace: str, service: str) -> str | None:
    predictor = plane.predictor(namespace, service.removesuffix(SUFFIX))
    return predictor.url if predictor is not None else None


def _forward(url: str, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, dict[str, str]]:
    address = urlsplit(url)
    connection = http.client.HTTPConnection(address.hostname or "127.0.0.1", address.port, timeout=30)
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    except OSError as error:
        return 502, f'{{"error": "backend unreachable: {error}"}}'.encode(), {}
    finally:
        connection.close()
