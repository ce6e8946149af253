"""The children a ModelDeployment owns: who owns them, what they are named, and how each is marked as its own, so
garbage collection takes them with it and no two ModelDeployments claim the same one."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from steward_operator import specs
from steward_operator.kinds import Kind

VERSION_LABEL = "steward.dev/version"
"""On every child that serves: the version it serves (the incumbent, for a child that serves two)."""
CHALLENGER_LABEL = "steward.dev/challenger"
"""On a child that serves a challenger beside its incumbent (a stream's workers): the challenger's version."""

# KServe derives more names from an InferenceService's ("<name>-predictor-..."); leave them room.
MAX_CHILD_NAME = 52


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment its children belong to, with the traffic spec their routes are written from."""

    name: str
    namespace: str
    uid: str
    traffic: specs.Traffic


def owned(owner: Owner, kind: Kind, spec: dict[str, Any]) -> dict[str, Any]:
    """A child of `kind` named after its owner, labelled as Steward's, and garbage-collected with the owner."""
    return {
        "apiVersion": kind.api_version,
        "kind": kind.kind,
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": {"app.kubernetes.io/managed-by": "steward", "steward.dev/model": owner.name},
            "ownerReferences": [
                {
                    "apiVersion": f"{specs.GROUP}/{specs.VERSION}",
                    "kind": specs.KIND,
                    "name": owner.name,
                    "uid": owner.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": spec,
    }


def child_name(model: str, version: str) -> str:
    """The DNS-1035 name of a version's InferenceService or CronJob: `<model>--<version>`. A ModelDeployment's name
    never holds "--" (the CRD refuses it) and a respelled version never does, so the name splits one way only and
    two ModelDeployments never claim the same child. Versions that had to be respelled (v1.0 and v1_0 both become
    v1-0), and names too long, get a short hash of the original pair."""
    spelled = re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", version.lower())).strip("-")
    name = f"{model}--{spelled}"
    if spelled != version or len(name) > MAX_CHILD_NAME:
        digest = hashlib.sha256(f"{model}/{version}".encode()).hexdigest()[:6]
        name = f"{name[: MAX_CHILD_NAME - 7].rstrip('-')}-{digest}"
    return name


def predictor_service(inference_service: str) -> str:
    """The Service KServe makes for an InferenceService's predictor, which routes send its traffic to."""
    return f"{inference_service}-predictor"
