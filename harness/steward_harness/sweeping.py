"""Stand-ins for what a cluster runs where it does not (KServe's controller, a kubelet): each polls the API server
every `interval` seconds, acts on what it finds as the real one would, and runs what it starts as local processes."""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Self, TypeVar
from urllib.parse import urlencode

Process = TypeVar("Process")


@dataclass
class Sweeper(Generic[Process]):
    """Sweeps until stopped; at stop, retires every process it runs."""

    server: str
    context: ssl.SSLContext
    interval: float = 0.1
    _running: dict[str, Process] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._loop, name=type(self).__name__, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for key in list(self._running):
            self._retire(key)

    def _loop(self) -> None:
        while not self._stop.is_set():
            # The API server may be restarting or gone: try again next round.
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                self._sweep()
            self._stop.wait(self.interval)

    def _sweep(self) -> None:
        raise NotImplementedError

    def _retire(self, key: str) -> None:
        """Stop the process under `key` and forget it."""
        raise NotImplementedError

    def _request(
        self, method: str, path: str, body: object = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(  # noqa: S310 -- the control plane's https URL
            self.server + path, data=data, method=method, headers={"Content-Type": content_type}
        )
        with urllib.request.urlopen(request, context=self.context, timeout=10) as response:  # noqa: S310
            result: dict[str, Any] = json.loads(response.read() or b"{}")
            return result

    def _confirm_deletion(self, pod: dict[str, Any]) -> None:
        """What a kubelet does once a pod's processes are gone: delete it for good."""
        metadata = pod["metadata"]
        body = {"gracePeriodSeconds": 0, "preconditions": {"uid": metadata["uid"]}}
        with contextlib.suppress(urllib.error.HTTPError):
            self._request("DELETE", f"/api/v1/namespaces/{metadata['namespace']}/pods/{metadata['name']}", body)

    def _pods(self, namespaces: set[str], selector: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """Each pod matching `selector` in `namespaces` that is not being deleted, by namespace/name/uid. A deleted
        one's process is retired and its deletion confirmed, as a kubelet does."""
        for namespace in list(namespaces):
            query = urlencode({"labelSelector": selector})
            for pod in self._request("GET", f"/api/v1/namespaces/{namespace}/pods?{query}").get("items", []):
                metadata = pod["metadata"]
                key = f"{namespace}/{metadata['name']}/{metadata['uid']}"
                if metadata.get("deletionTimestamp"):
                    if key in self._running:
                        self._retire(key)
                    self._confirm_deletion(pod)
                    continue
                yield key, pod
