"""The baseline the predictor is measured against: a KServe custom model that only loads a pipeline and
predicts: no bundle checks, no validation, no metrics."""

from __future__ import annotations

import argparse
from typing import Any

import kserve
import pandas as pd
import skops.io


class MinimalModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.pipeline: Any = None

    def load(self) -> bool:
        self.pipeline = skops.io.load(self.path, trusted=skops.io.get_untrusted_types(file=self.path))
        self.ready = True
        return True

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        frame = pd.DataFrame.from_records(payload["instances"])
        return {"predictions": self.pipeline.predict(frame).tolist()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    parser.add_argument("--pipeline", required=True)
    args, _ = parser.parse_known_args()
    model = MinimalModel(args.model_name, args.pipeline)
    model.load()
    kserve.ModelServer().start([model])
