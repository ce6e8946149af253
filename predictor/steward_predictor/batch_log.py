"""A batch run's rows reported to the monitor, each under its request id (`<run id>-<row>`, the request_id column of
the scores): every row the run's bundle scored, and with a shadow, every row the shadow's bundle scored, under the
same ids. The monitor then holds both versions' answers to the same rows, and outcomes posted later for the
output's request ids judge both. A run waits for a slow monitor rather than lose a row."""

from __future__ import annotations

from steward_predictor.chunks import PREDICTION, PROBABILITY_PREFIX, REQUEST_ID, ScoredChunk
from steward_predictor.prediction_log import Reporter
from steward_predictor.scoring import Scorer

HURRIED = 5.0
"""Seconds a run told to stop, or whose monitor was found away, waits for the monitor to take its last rows."""


class BatchLog:
    """Reports the chunks of one run, through a patient `reporter`: at its end, the run waits up to `wait` seconds
    for the monitor to take the last rows."""

    def __init__(self, reporter: Reporter, wait: float) -> None:
        self.reporter = reporter
        self.wait = wait

    def add(self, chunk: ScoredChunk, scorer: Scorer, variant: str) -> None:
        """The rows of `chunk` that `scorer` answered, as `variant` (incumbent, or shadow)."""
        scores = chunk.scores
        if not scores.num_rows:
            return
        classes = scorer.classes
        probability = None
        if classes is not None and len(classes) == 2:  # The positive class's probability, as online.
            probability = scores.column(f"{PROBABILITY_PREFIX}{classes[1]}").to_numpy()
        predictions = scores.column(PREDICTION).to_numpy()
        ids = scores.column(REQUEST_ID).to_pylist()
        self.reporter.report(scorer.bundle.version, variant, "", predictions, probability, ids=ids)

    def close(self, *, hurried: bool = False) -> dict[str, int]:
        """Send what is left, and say what became of every row reported. A run told to stop, or whose monitor was
        found away, waits briefly."""
        self.reporter.close(self.wait if self.reporter.patient and not hurried else min(self.wait, HURRIED))
        counted = self.reporter.counted
        return {
            "sent": counted["sent"],
            "refused": counted["refused"],
            "dropped": counted["dropped"],
            "unsent": self.reporter.unsent,
        }
