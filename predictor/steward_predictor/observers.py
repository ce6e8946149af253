"""What scored batches feed, whichever front end scored them: the Prometheus metrics of the version that scored
them, and the monitor's prediction log."""

from __future__ import annotations

from steward_predictor.metrics import ModelMetrics
from steward_predictor.prediction_log import Reporter
from steward_predictor.scoring import Observation


class Metered:
    """Feeds one version's metrics: the feature values and schema problems of every batch, and the predictions
    and time taken of every batch that was scored."""

    def __init__(self, metrics: ModelMetrics) -> None:
        self.metrics = metrics

    def observe(self, observation: Observation) -> None:
        self.metrics.observe_inputs(observation.checked)
        if observation.predictions is not None:
            self.metrics.observe_outputs(observation.predictions, observation.probabilities)
            self.metrics.latency.observe(observation.seconds)


class PredictionLog:
    """Reports every scored row to the monitor, under its own id when it has one (a stream's record), else its
    request's (`<request id>-<row>` for a request of several rows), with the positive class's probability for
    binary classifiers."""

    def __init__(self, reporter: Reporter, variant: str) -> None:
        self.reporter = reporter
        self.variant = variant

    def observe(self, observation: Observation) -> None:
        predictions, probabilities = observation.predictions, observation.probabilities
        if predictions is None:
            return
        scores = probabilities[:, 1] if probabilities is not None and probabilities.shape[1] == 2 else None
        ids = None
        if observation.row_ids is not None:
            ids = [observation.row_ids[row] for row in observation.checked.accepted.tolist()]
        self.reporter.report(observation.version, self.variant, observation.request_id, predictions, scores, ids=ids)
