"""Where each kind of object Steward reads or writes lives in the API. The kinds of child a serving mode or a
traffic provider makes are declared in its own module; these are the rest."""

from __future__ import annotations

from dataclasses import dataclass

from steward_operator import specs


@dataclass(frozen=True)
class Kind:
    """Where a kind of object lives in the API."""

    api_version: str
    kind: str
    plural: str

    @property
    def resource(self) -> tuple[str, str, str]:
        """(group, version, plural), as a watch names it; the core group is ""."""
        group, _, version = self.api_version.rpartition("/")
        return group, version, self.plural

    def path(self, namespace: str | None, name: str | None = None, subresource: str | None = None) -> str:
        """The object's URL path; with no namespace, the kind's across all namespaces."""
        root = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        path = f"{root}/namespaces/{namespace}/{self.plural}" if namespace else f"{root}/{self.plural}"
        return path + (f"/{name}" if name else "") + (f"/{subresource}" if subresource else "")


MODEL_DEPLOYMENT = Kind(f"{specs.GROUP}/{specs.VERSION}", specs.KIND, specs.PLURAL)
MODEL_COMMAND = Kind(f"{specs.GROUP}/{specs.VERSION}", specs.COMMAND_KIND, specs.COMMAND_PLURAL)
CRON_JOB = Kind("batch/v1", "CronJob", "cronjobs")
"""A batch version's schedule, and spec.retraining.schedule's."""
JOB = Kind("batch/v1", "Job", "jobs")
"""Retraining Jobs: owned like children, but never pruned; each is a record of a run."""
GATEWAY = Kind("gateway.networking.k8s.io/v1", "Gateway", "gateways")
"""Read only, with GATEWAY_CLASS: what implements the Gateway an HTTPRoute attaches to."""
GATEWAY_CLASS = Kind("gateway.networking.k8s.io/v1", "GatewayClass", "gatewayclasses")
POD = Kind("v1", "Pod", "pods")
"""Read only, listed: the termination message a batch challenger's run leaves its comparison in."""
ENDPOINT_SLICE = Kind("discovery.k8s.io/v1", "EndpointSlice", "endpointslices")
"""Read only: whether a predictor Service has a ready pod behind it (KServe's Standard mode does not say)."""
