"""Predictor tokens: each one scoped to one ModelDeployment and derived from the monitor's ingest key."""

from __future__ import annotations

import functools
import hashlib
import hmac

SCHEME = "Bearer "
KNOWN_SCOPES = 4_096
"""Scopes whose expected digest is kept, so a predictor's token is checked without an HMAC per request."""


def predictor_token(key: str, namespace: str, model: str) -> str:
    """The token predictors of `model` in `namespace` present: `namespace/model/hex(HMAC-SHA256(key,
    "namespace/model"))`, where `key` is the ingest key as text with surrounding whitespace removed. Kubernetes
    names never hold "/", so the token splits back into its three parts."""
    scope = f"{namespace}/{model}"
    return f"{scope}/{hmac.new(key.encode(), scope.encode(), hashlib.sha256).hexdigest()}"


class IngestKey:
    """The key predictor tokens are derived from; it says which ModelDeployment a token is for, if any."""

    def __init__(self, key: str) -> None:
        self._key = key.strip()
        if not self._key:
            raise ValueError("the ingest key is empty")
        # Bounded: a caller inventing scopes only evicts entries, which are recomputed on their next use.
        self._expected = functools.lru_cache(maxsize=KNOWN_SCOPES)(self._token)

    def scope(self, authorization: str) -> tuple[str, str] | None:
        """(namespace, model) of a valid `Authorization: Bearer <token>` header value; None for anything else."""
        if not authorization.startswith(SCHEME):
            return None
        token = authorization.removeprefix(SCHEME).strip()
        parts = token.split("/")
        if len(parts) != 3:
            return None
        namespace, model, _ = parts
        if not hmac.compare_digest(token.encode(), self._expected(namespace, model).encode()):
            return None
        return namespace, model

    def _token(self, namespace: str, model: str) -> str:
        return predictor_token(self._key, namespace, model)
