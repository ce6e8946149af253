"""The one way a bundle scores, whoever asks: the KServe model, a batch run and a stream consumer load a bundle
through here and predict every batch of validated rows through here, and what each scored batch showed goes to
the observers they attach (the metrics, the monitor's prediction log). The front ends only translate their I/O."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from steward_predictor import parity
from steward_predictor.bundles import Bundle, BundleError, load_bundle
from steward_predictor.schemas import Checked
from steward_predictor.validating import Validator

GOLDEN_REQUEST_ID = "golden-examples"
"""What the replay of the golden examples is scored under."""
SHOWN_PROBLEMS = 5
"""A refusal names this many golden examples that no longer reproduce; the rest are counted."""


@dataclass(frozen=True)
class Observation:
    """What one scored batch showed: a request, a chunk of a batch run, or a stream's batch of events."""

    version: str
    """The model version that scored it."""
    request_id: str
    """The request's id, or the batch run's."""
    row_ids: Sequence[str] | None
    """One id per input row when each row is its own event (a stream's records); None when the rows share
    `request_id`."""
    checked: Checked
    """The rows as validation left them: the accepted rows' typed columns, the rejected rows and every problem."""
    predictions: np.ndarray | None
    """One per accepted row; None when nothing was predicted (the batch was refused, or the pipeline failed)."""
    probabilities: np.ndarray | None
    """Classifiers: one row per prediction, one column per class, in the order of the bundle's classes."""
    seconds: float
    """From the batch's arrival to its predictions."""


class Observer(Protocol):
    """Whatever is fed by every scored batch, whichever front end scored it."""

    def observe(self, observation: Observation) -> None:
        """Take note of one scored batch; called on the thread that scored it."""


@dataclass(frozen=True)
class Scored:
    """One batch of rows after scoring."""

    checked: Checked
    predictions: np.ndarray
    """One per accepted row; none when the batch was refused."""
    probabilities: np.ndarray | None
    """Classifiers: one row per prediction, one column per class, in the order of the bundle's classes."""
    refused: bool
    """Refused whole for a rejected row: nothing was predicted."""


class Scorer:
    """Scores batches of validated rows with one bundle, and tells its observers what each batch showed.

    Validation is the bundle's `validator`, kept apart from predicting so that a batch run can validate the next
    chunk on its reader thread while this one is scored."""

    def __init__(self, bundle: Bundle, observers: Iterable[Observer] = ()) -> None:
        self.bundle = bundle
        self.validator = Validator(bundle.schema)
        self.observers = list(observers)
        metadata = bundle.metadata
        self.classes = metadata.classes if metadata.task == "classification" else None
        """The class labels of a classifier, in the order of the probabilities' columns; None for a regressor."""

    def score(
        self,
        checked: Checked,
        *,
        request_id: str,
        row_ids: Sequence[str] | None = None,
        started: float | None = None,
        all_or_none: bool = False,
    ) -> Scored:
        """Predict the accepted rows of `checked`, then tell every observer. With `all_or_none` (a request, answered
        for all its rows or refused), one rejected row refuses the batch and nothing is predicted; otherwise the
        rejected rows are set aside and the rest predicted (a chunk of a batch run). `started` is when the batch
        arrived (time.perf_counter), by default now. `row_ids`, one per input row, name rows that are events of
        their own. Observers hear of a batch the pipeline failed on too."""
        started = time.perf_counter() if started is None else started
        refused = all_or_none and bool(checked.rejected)
        predicted = None
        try:
            if not refused and len(checked.accepted):
                predicted = self.bundle.predict(checked.frame)
        finally:
            observation = Observation(
                version=self.bundle.version,
                request_id=request_id,
                row_ids=row_ids,
                checked=checked,
                predictions=predicted[0] if predicted is not None else None,
                probabilities=predicted[1] if predicted is not None else None,
                seconds=time.perf_counter() - started,
            )
            for observer in self.observers:
                observer.observe(observation)
        predictions, probabilities = predicted if predicted is not None else self._nothing()
        return Scored(checked=checked, predictions=predictions, probabilities=probabilities, refused=refused)

    def _nothing(self) -> tuple[np.ndarray, np.ndarray | None]:
        """No predictions, shaped as predictions are."""
        classes = self.classes
        return np.array([], dtype=object), np.empty((0, len(classes))) if classes is not None else None


def load(
    uri: str,
    *,
    digest: str | None = None,
    version: str | None = None,
    allow_pickle: bool = False,
    trusted_types: Sequence[str] = (),
) -> Scorer:
    """Load the bundle at `uri` for scoring: its files must match their digests (and `digest`, when given), it
    must hold model `version` (when given), its pipeline only trusted types (pickle only with `allow_pickle`),
    and its golden examples must reproduce when scored as every row will be. Whatever is wrong is raised as a
    BundleError that says what. The scorer has no observers yet."""
    try:
        bundle = load_bundle(uri, expected_digest=digest, allow_pickle=allow_pickle, trusted_types=tuple(trusted_types))
        if version and bundle.version != version:
            raise BundleError(f"the bundle holds model version {bundle.version}, not {version}")
        unfit = parity.defects(bundle)
        if unfit:
            raise BundleError(f"the golden examples cannot be replayed: {'; '.join(unfit)}")
        scorer = Scorer(bundle)
        skew = _replayed(scorer)
    except Exception as error:  # whatever is wrong with the bundle, it is refused in the same words
        raise refusal(error, uri) from error
    if skew:
        shown = "; ".join(skew[:SHOWN_PROBLEMS])
        more = f"; and {len(skew) - SHOWN_PROBLEMS} more" if len(skew) > SHOWN_PROBLEMS else ""
        raise BundleError(
            f"training/serving skew: golden examples no longer reproduce ({shown}{more}); trained with "
            f"scikit-learn {bundle.metadata.sklearn}, numpy {bundle.metadata.numpy}"
        )
    return scorer


def replay(scorer: Scorer) -> list[str]:
    """Score the bundle's golden examples exactly as serving scores a request, and say what no longer reproduces;
    empty when training and serving agree."""
    return parity.defects(scorer.bundle) or _replayed(scorer)


def _replayed(scorer: Scorer) -> list[str]:
    """The replay itself, of golden examples already known to be replayable (parity.defects found nothing)."""
    bundle = scorer.bundle
    checked = scorer.validator.check_records(bundle.golden.inputs)
    if checked.rejected:
        return [
            f"golden example refused by the feature schema: {problem}" for problem in checked.problems[:SHOWN_PROBLEMS]
        ]
    try:
        scored = scorer.score(checked, request_id=GOLDEN_REQUEST_ID, all_or_none=True)
    except Exception as error:  # a pipeline that fails on its own golden examples is the finding itself
        return [f"the pipeline fails on the golden examples ({type(error).__name__}: {error})"]
    return parity.differences(bundle, scored.predictions, scored.probabilities)


def refusal(error: Exception, uri: str) -> BundleError:
    """`error`, met while loading the bundle at `uri`, as the error every front end refuses a bundle with."""
    if isinstance(error, BundleError):
        return error
    text = " ".join(str(error).split())
    return BundleError(f"the bundle at {uri} cannot be loaded ({type(error).__name__}: {text})")
