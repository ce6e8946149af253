"""KServe's own canary: one InferenceService runs the challenger's predictor with canaryTrafficPercent, and
KServe routes the rest to the revision rolled out before it, the incumbent's (serverless mode). No route
objects, and no shadow: the CRD refuses shadow with this provider."""

from __future__ import annotations

from typing import Any

from steward_operator.children import Owner
from steward_operator.kinds import Kind
from steward_operator.traffic.base import ShadowNotSupportedError, Split


class KServe:
    name = "kserve"
    kinds: tuple[Kind, ...] = ()
    supports_shadow = False
    one_inference_service = True

    def routes(self, owner: Owner, split: Split) -> list[dict[str, Any]]:
        if split.shadow_percent:
            raise ShadowNotSupportedError("the kserve traffic provider cannot mirror requests")
        return []

    def predictor_patch(self, split: Split) -> dict[str, Any]:
        if split.shadow_percent:
            raise ShadowNotSupportedError("the kserve traffic provider cannot mirror requests")
        if split.challenger is None:
            return {}
        return {"canaryTrafficPercent": split.challenger_weight}
