"""The one module that talks to the Kubernetes API: reads, server-side applies, status writes, deletes, events."""

from __future__ import annotations

import contextlib
import json
import socket
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import kopf

from steward_operator import specs
from steward_operator.kinds import Kind

FIELD_MANAGER = "steward-operator"
COMPONENT = "steward-operator"


class ApiError(Exception):
    """The API server refused a request."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class NotFoundError(ApiError):
    """The object, or its kind, does not exist."""


class ConflictError(ApiError):
    """Someone else wrote the object since it was read."""


class Cluster:
    """An API client with the operator's credentials: in a pod its service account, else the kubeconfig."""

    def __init__(self, connection: kopf.ConnectionInfo) -> None:
        self._connection = connection
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def connect(cls) -> Cluster:
        settings = kopf.OperatorSettings()
        connection = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(settings=settings)
        if connection is None:
            raise RuntimeError("no Kubernetes credentials: neither a service account nor a kubeconfig was found")
        return cls(connection)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get(self, kind: Kind, namespace: str | None, name: str) -> dict[str, Any] | None:
        """The object, or None when it (or its kind) does not exist; `namespace` None for a cluster-scoped kind."""
        try:
            return await self._request("GET", kind.path(namespace, name))
        except NotFoundError:
            return None

    async def list(self, kind: Kind, namespace: str | None, selector: str = "") -> list[dict[str, Any]]:
        """Objects of `kind` matching the label selector (in every namespace when `namespace` is None); none
        when the kind is not installed."""
        try:
            found = await self._request("GET", kind.path(namespace) + "?" + urlencode({"labelSelector": selector}))
        except NotFoundError:
            return []
        items: list[dict[str, Any]] = found.get("items", [])
        return items

    async def apply(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply as Steward's field manager: creates or updates the fields Steward owns, and
        writes nothing when they already hold."""
        metadata = body["metadata"]
        path = kind.path(metadata["namespace"], metadata["name"])
        query = urlencode({"fieldManager": FIELD_MANAGER, "force": "true"})
        return await self._request("PATCH", f"{path}?{query}", body, "application/apply-patch+yaml")

    async def replace_status(self, kind: Kind, body: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Write a whole status, as of the resourceVersion read: a concurrent write (a command from
        kubectl steward, say) raises ConflictError instead of being lost."""
        metadata = body["metadata"]
        path = kind.path(metadata["namespace"], metadata["name"], "status")
        return await self._request("PUT", path, {**body, "status": status})

    async def merge(
        self, kind: Kind, body: dict[str, Any], patch: dict[str, Any], subresource: str | None = None
    ) -> None:
        """A JSON merge patch of the object (or its `subresource`): the fields `patch` names; the rest stay."""
        metadata = body["metadata"]
        path = kind.path(metadata["namespace"], metadata["name"], subresource)
        await self._request("PATCH", path, patch, "application/merge-patch+json")

    async def delete(self, kind: Kind, body: dict[str, Any]) -> None:
        metadata = body["metadata"]
        options = {"propagationPolicy": "Background", "preconditions": {"uid": metadata["uid"]}}
        # Gone already, or replaced by a newer object of the same name: nothing of ours to delete.
        with contextlib.suppress(NotFoundError, ConflictError):
            await self._request("DELETE", kind.path(metadata["namespace"], metadata["name"]), options)

    async def record(self, body: dict[str, Any], reason: str, message: str, warning: bool = False) -> None:
        """A Kubernetes Event about `body`, shown by `kubectl describe` and `kubectl get events`."""
        metadata = body["metadata"]
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{metadata['name']}.", "namespace": metadata["namespace"]},
            "involvedObject": {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "name": metadata["name"],
                "namespace": metadata["namespace"],
                "uid": metadata["uid"],
            },
            "reason": reason,
            "message": message[:1024],
            "type": "Warning" if warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": f"{specs.GROUP}/operator",
            "reportingInstance": socket.gethostname()[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        await self._request("POST", f"/api/v1/namespaces/{metadata['namespace']}/events", event)

    async def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, content_type: str = "application/json"
    ) -> dict[str, Any]:
        session = await self._open()
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type} if data is not None else {}
        async with session.request(method, self._connection.server.rstrip("/") + path, data=data, headers=headers) as r:
            text = await r.text()
            if r.status < 400:
                result: dict[str, Any] = json.loads(text) if text else {}
                return result
            try:
                problem = json.loads(text)
            except ValueError:
                problem = {"reason": r.reason or "", "message": text[:500]}
            error = {404: NotFoundError, 409: ConflictError}.get(r.status, ApiError)
            raise error(r.status, problem.get("reason", ""), problem.get("message", ""))

    async def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            connection = self._connection
            connector = aiohttp.TCPConnector(ssl=connection.as_ssl_context(), limit=20)
            timeout = aiohttp.ClientTimeout(total=30)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=connection.as_http_headers(), timeout=timeout
            )
        return self._session
