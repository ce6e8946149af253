"""How a pod Steward makes itself (a stream worker, a batch job) reaches its bundles. Online predictors have KServe's
storage initializer for that; these read their bundle where it is, and a pvc:// bundle's claim is mounted read-only,
as KServe mounts one, with the path inside it given in the URI's place."""

from __future__ import annotations

from typing import Any

MOUNTS = "/mnt/bundles"
"""Where a pvc:// bundle's claim is mounted: /mnt/bundles/<claim>."""


def mount(uris: list[str], pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    """The bundles `uris` as `container` reads them, mounting each pvc:// claim among them once in `pod`."""
    local = []
    for uri in uris:
        if not uri.startswith("pvc://"):
            local.append(uri)
            continue
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        claims = pod.setdefault("volumes", [])
        if claim not in {entry.get("persistentVolumeClaim", {}).get("claimName") for entry in claims}:
            # Named by position: a claim's name may be longer than a volume's may be.
            name = f"bundles-{sum(1 for entry in claims if 'persistentVolumeClaim' in entry)}"
            claims.append({"name": name, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
            mounted = {"name": name, "mountPath": f"{MOUNTS}/{claim}", "readOnly": True}
            container.setdefault("volumeMounts", []).append(mounted)
        local.append(f"{MOUNTS}/{claim}/{path}".rstrip("/"))
    return local
