"""The live guardrails, registered in one place: what each compares between the incumbent's and the challenger's
counts (an anytime-valid test from `sequential`), what it waits for without data, and which readings it needs
to be usable. A new guardrail is a comparison here, an entry in GUARDRAILS and its name in the spec's enum
(specs.Guardrail.name, which a test holds to this registry)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise

from steward_operator import paired, specs
from steward_operator.distributions import compare_distributions, compare_latencies
from steward_operator.evidence.base import ArmCounts, Outcomes, PairCounts
from steward_operator.sequential import Comparison, compare_means, compare_rates

# Whole numbers a float64 holds exactly: a count beyond this is no exact count, and the tests compute in floats.
_LARGEST_COUNT = 2**53


@dataclass(frozen=True)
class Window:
    """What each version served since the current stage began, over the same window of time, and in shadow both
    versions' answers to the same requests (None where there are none to read, or they could not be read)."""

    incumbent: ArmCounts
    challenger: ArmCounts
    pairs: PairCounts | None = None
    outcomes: Outcomes | None = None
    """Both versions' losses on matured outcomes, where a guardrail compares them."""


Comparing = Callable[[Window, float, float], tuple[Comparison, str | None]]
"""A guardrail's comparison of the versions in a window at a tolerance and alpha, with why it has no data (None
when it has)."""

Describing = Callable[[Comparison, float, Window], str]
"""A comparison that failed at a tolerance, in words: what the challenger did, how much worse at least, and the
tolerance that broke."""


@dataclass(frozen=True)
class Guardrail:
    """One guardrail: the reading it compares (what it waits for without data), its comparison, whether it
    compares paired answers, which only the shadow stage has (elsewhere it is not judged), whether it compares
    latencies, which a batch run's rows have not (there it is not judged), whether it reads outcomes, which the
    monitor joins with the predictions reported to it, and whether it is a gate: one that can roll back at any
    stage, but is waited for, and must pass, only at the last."""

    needs: str
    compare: Comparing
    breach: Describing
    paired: bool = False
    timed: bool = False
    labelled: bool = False
    gate: bool = False


def _arms(
    compare: Callable[[ArmCounts, ArmCounts, float, float], tuple[Comparison, str | None]],
) -> Comparing:
    """A comparison of the two versions' own counts."""
    return lambda window, tolerance, alpha: compare(window.incumbent, window.challenger, tolerance, alpha)


def answered(counts: ArmCounts) -> tuple[int, int]:
    """(errors, requests) of one version as clients were answered: each the larger of what its predictors counted
    and what the gateway in front of it counted, where one did."""
    return max(counts.errors, counts.gateway_errors or 0), max(counts.requests, counts.gateway_requests or 0)


def _error_rate(
    incumbent: ArmCounts, challenger: ArmCounts, tolerance: float, alpha: float
) -> tuple[Comparison, str | None]:
    """The errorRate comparison on the requests as clients were answered, and why it has no data."""
    comparison = compare_rates(
        "errorRate", *answered(incumbent), *answered(challenger), tolerance=tolerance, alpha=alpha
    )
    silent = [arm for arm, counts in (("challenger", challenger), ("incumbent", incumbent)) if not answered(counts)[1]]
    return comparison, f"the {' and the '.join(silent)} answered none" if silent else None


def _slow_requests(
    incumbent: ArmCounts, challenger: ArmCounts, tolerance: float, alpha: float
) -> tuple[Comparison, str | None]:
    """The slowRequests comparison, and why it has no data (None when it has)."""
    # `slow` is counted among the timed requests, so those are its denominator.
    if incumbent.slow_after is not None and challenger.slow_after is not None:
        slow_i, slow_c = incumbent.slow, challenger.slow
    else:
        threshold = slow_threshold(incumbent)
        missing = _no_threshold(incumbent, challenger, threshold)
        if threshold is None or missing is not None:
            # No latency threshold can be applied: zero slow requests would be false reassurance.
            comparison = Comparison("slowRequests", None, None, None, None, incumbent.timed, challenger.timed, "noData")
            return comparison, missing
        slow_i = incumbent.timed - incumbent.latency[threshold]
        slow_c = challenger.timed - challenger.latency[threshold]
    comparison = compare_rates(
        "slowRequests", slow_i, incumbent.timed, slow_c, challenger.timed, tolerance=tolerance, alpha=alpha
    )
    untimed = [arm for arm, counts in (("challenger", challenger), ("incumbent", incumbent)) if not counts.timed]
    return comparison, f"the {' and the '.join(untimed)} timed no requests" if untimed else None


def _no_histograms(incumbent: ArmCounts, challenger: ArmCounts) -> str | None:
    """Which version's requests carry no latency histogram; None when both do."""
    unhistogrammed = [
        arm for arm, counts in (("challenger", challenger), ("incumbent", incumbent)) if not counts.latency
    ]
    if len(unhistogrammed) == 2:
        return "neither version's requests carry a latency histogram"
    return f"the {unhistogrammed[0]}'s requests carry no latency histogram" if unhistogrammed else None


def _no_threshold(incumbent: ArmCounts, challenger: ArmCounts, threshold: float | None) -> str | None:
    """Why the incumbent's p95 cannot be applied to both versions' latency histograms; None when it can."""
    missing = _no_histograms(incumbent, challenger)
    if missing is not None:
        return missing
    if not incumbent.timed:
        return "the incumbent timed no requests"
    if threshold is None:
        return "the incumbent's p95 latency lies above its largest finite latency bucket, so no threshold applies"
    if threshold not in challenger.latency:
        return f"the challenger's histogram has no latency bucket at the incumbent's p95 ({threshold:g} s)"
    return None


def slow_threshold(incumbent: ArmCounts, quantile: float = 0.95) -> float | None:
    """The incumbent's p95 latency as a bucket boundary: the smallest boundary at or under which at least 95 % of
    its timed requests finished. None without timed requests, or when that is only the +Inf bucket."""
    if not incumbent.timed:
        return None
    needed = quantile * incumbent.timed
    found = min((bound for bound, count in incumbent.latency.items() if count >= needed), default=None)
    return found if found is not None and math.isfinite(found) else None


def _latency(
    incumbent: ArmCounts, challenger: ArmCounts, tolerance: float, alpha: float
) -> tuple[Comparison, str | None]:
    """The latency comparison over both versions' whole histograms, and why it has no data (None when it has)."""
    missing = _no_histograms(incumbent, challenger)
    if missing is None and set(incumbent.latency) != set(challenger.latency):
        missing = "the versions' latency histograms have different buckets"
    if missing is not None:
        return Comparison("latency", None, None, None, None, incumbent.timed, challenger.timed, "noData"), missing
    comparison = compare_latencies("latency", incumbent.latency, challenger.latency, tolerance=tolerance, alpha=alpha)
    untimed = [arm for arm, counts in (("challenger", challenger), ("incumbent", incumbent)) if not counts.timed]
    return comparison, f"the {' and the '.join(untimed)} timed no requests" if untimed else None


def _prediction_shift(
    incumbent: ArmCounts, challenger: ArmCounts, tolerance: float, alpha: float
) -> tuple[Comparison, str | None]:
    """The predictionShift comparison, and why it has no data (None when it has)."""
    bins = sorted({*incumbent.predictions, *challenger.predictions})
    counts_i = [incumbent.predictions.get(name, 0) for name in bins]
    counts_c = [challenger.predictions.get(name, 0) for name in bins]
    # The test needs two bins; an empty one changes no distance and keeps a one-class answer comparable.
    while len(counts_i) < 2:
        counts_i.append(0)
        counts_c.append(0)
    comparison = compare_distributions("predictionShift", counts_i, counts_c, tolerance=tolerance, alpha=alpha)
    unpredicted = [arm for arm, counts in (("challenger", counts_c), ("incumbent", counts_i)) if not sum(counts)]
    if len(unpredicted) == 2:
        return comparison, "neither version reported any"
    return comparison, f"the {unpredicted[0]} reported none" if unpredicted else None


def _disagreement(window: Window, tolerance: float, alpha: float) -> tuple[Comparison, str | None]:
    """The disagreement comparison on paired answers, and why it has no data."""
    pairs = window.pairs
    comparison = paired.disagreement(
        pairs.pairs if pairs else 0, pairs.disagreements if pairs else 0, tolerance=tolerance, alpha=alpha
    )
    if pairs is None:
        return comparison, "the monitor's pairs could not be read"
    return comparison, None if pairs.pairs else "the monitor has paired no request of the two versions yet"


def _paired_accuracy(window: Window, tolerance: float, alpha: float) -> tuple[Comparison, str | None]:
    """The pairedAccuracy comparison on the labelled pairs, and why it has no data."""
    pairs = window.pairs or PairCounts(0, 0)
    comparison = paired.accuracy_drop(
        pairs.labelled, pairs.only_incumbent, pairs.only_challenger, tolerance=tolerance, alpha=alpha
    )
    if window.pairs is None:
        return comparison, "the monitor's pairs could not be read"
    if not pairs.labelled:
        return comparison, f"no outcome has arrived for any of the {pairs.pairs:,} paired requests yet"
    return comparison, None


def _outcome(window: Window, tolerance: float, alpha: float) -> tuple[Comparison, str | None]:
    """The outcome comparison on both versions' matured outcomes, and why it has no data."""
    outcomes = window.outcomes
    if outcomes is None:
        return Comparison("outcome", None, None, None, None, 0, 0, "noData"), "the monitor's outcomes could not be read"
    incumbent, challenger = outcomes.incumbent, outcomes.challenger
    counts = {"challenger": challenger.count if challenger else 0, "incumbent": incumbent.count if incumbent else 0}
    if incumbent is None or challenger is None or min(counts.values()) < outcomes.least:
        short = [
            f"the {arm} has {count:,} of the {outcomes.least:,} it needs"
            for arm, count in counts.items()
            if count < outcomes.least
        ]
        waiting = (
            f"{' and '.join(short)}, among the predictions made until {outcomes.until:%Y-%m-%d %H:%M} UTC (younger"
            " ones' outcomes are not due yet)"
        )
        return Comparison(
            "outcome", None, None, None, None, counts["incumbent"], counts["challenger"], "noData"
        ), waiting
    if outcomes.metric == "accuracy":  # Misclassifications: a rate, as errorRate compares them.
        wrong_i, wrong_c = (round(losses.mean * losses.count) for losses in (incumbent, challenger))
        comparison = compare_rates(
            "outcome", wrong_i, incumbent.count, wrong_c, challenger.count, tolerance=tolerance, alpha=alpha
        )
        return comparison, None
    comparison = compare_means(
        "outcome",
        (incumbent.count, incumbent.mean, incumbent.variance),
        (challenger.count, challenger.mean, challenger.variance),
        tolerance=tolerance,
        alpha=alpha,
    )
    return comparison, None


# --- breaches in words -----------------------------------------------------------------------------------------


def number(value: float | None) -> str:
    return "none" if value is None else f"{value:.6g}"


def rate(value: float | None) -> str:
    return "none" if value is None else f"{value:.2%}"


def points(value: float | None) -> str:
    return "none" if value is None else f"{value * 100:.2f} percentage points"


def _more(counted: str) -> Describing:
    """A rate's breach: both versions' rates over what was counted, and the least increase."""

    def words(comparison: Comparison, tolerance: float, window: Window) -> str:
        samples = f"{comparison.challenger_samples:,} and {comparison.incumbent_samples:,}"
        what = (
            f"challenger {rate(comparison.challenger)} against incumbent {rate(comparison.incumbent)} over"
            f" {samples} {counted}, an increase of at least {points(comparison.lower)}, above the tolerance of"
            f" {points(tolerance)}"
        )
        gateway, own = window.challenger.gateway_errors or 0, window.challenger.errors
        if counted == "requests" and gateway > own:
            what += f" (the gateway answered {gateway:,} of its requests with a 5xx, its predictors {own:,})"
        return what

    return words


def _shifted(comparison: Comparison, tolerance: float, _: Window) -> str:
    return (
        f"the challenger's predictions are {number(comparison.challenger)} apart from the incumbent's in total"
        f" variation over {comparison.challenger_samples:,} and {comparison.incumbent_samples:,} predictions, at"
        f" least {number(comparison.lower)}, above the tolerance of {number(tolerance)}"
    )


def _slower(comparison: Comparison, tolerance: float, _: Window) -> str:
    return (
        f"a challenger request was slower than an incumbent's {rate(comparison.challenger)} of the time over"
        f" {comparison.challenger_samples:,} and {comparison.incumbent_samples:,} timed requests (half when in the"
        f" same latency bucket), at least {rate(0.5 + (comparison.lower or 0))}, above the {rate(0.5 + tolerance)}"
        " allowed"
    )


def _answered_differently(comparison: Comparison, tolerance: float, _: Window) -> str:
    return (
        f"the challenger answered {rate(comparison.challenger)} of {comparison.challenger_samples:,} paired requests"
        f" differently from the incumbent, at least {rate(comparison.lower)}, above the tolerance of {rate(tolerance)}"
    )


def _less_accurate(comparison: Comparison, tolerance: float, _: Window) -> str:
    return (
        f"on {comparison.challenger_samples:,} paired requests with outcomes, only the incumbent was right on"
        f" {rate(comparison.incumbent)} and only the challenger on {rate(comparison.challenger)}: its accuracy is"
        f" lower by at least {points(comparison.lower)}, above the tolerance of {points(tolerance)}"
    )


def outcome_words(comparison: Comparison, window: Window, bound: str, value: float | None) -> str:
    """Both versions' quality on matured outcomes, and how much worse the challenger is, bounded from one side."""
    metric = window.outcomes.metric if window.outcomes else "outcome"
    samples = f"{comparison.challenger_samples:,} and {comparison.incumbent_samples:,} matured outcomes"
    if metric == "accuracy":
        accuracy_c = None if comparison.challenger is None else 1 - comparison.challenger
        accuracy_i = None if comparison.incumbent is None else 1 - comparison.incumbent
        return (
            f"on {samples} the challenger's accuracy is {rate(accuracy_c)} against the incumbent's"
            f" {rate(accuracy_i)}, lower by {bound} {points(value)}"
        )
    loss = {"logLoss": "log loss", "mae": "mean absolute error", "rmse": "mean squared error"}.get(metric, metric)
    return (
        f"on {samples} the challenger's {loss} is {number(comparison.challenger)} against the incumbent's"
        f" {number(comparison.incumbent)}, higher by {bound} {number(value)}"
    )


def _worse_outcomes(comparison: Comparison, tolerance: float, window: Window) -> str:
    return (
        f"{outcome_words(comparison, window, 'at least', comparison.lower)}, above the tolerance of {number(tolerance)}"
    )


GUARDRAILS = {
    "errorRate": Guardrail("requests", _arms(_error_rate), _more("requests")),
    "slowRequests": Guardrail("latency", _arms(_slow_requests), _more("timed requests"), timed=True),
    "latency": Guardrail("latency", _arms(_latency), _slower, timed=True),
    "predictionShift": Guardrail("predictions", _arms(_prediction_shift), _shifted),
    "disagreement": Guardrail("paired answers", _disagreement, _answered_differently, paired=True),
    "pairedAccuracy": Guardrail("labelled pairs", _paired_accuracy, _less_accurate, paired=True, labelled=True),
    "outcome": Guardrail("matured outcomes", _outcome, _worse_outcomes, labelled=True, gate=True),
}
"""Every guardrail a rollout may name, by the name it is named with."""


def on_outcomes(spec: specs.ModelDeploymentSpec) -> bool:
    """Whether a guardrail of the rollout reads outcomes."""
    return any(GUARDRAILS[guardrail.name].labelled for guardrail in spec.rollout.guardrails)


def unusable_readings(rollout: specs.Rollout, incumbent: ArmCounts, challenger: ArmCounts) -> list[str]:
    """What keeps the readings this stage decides on from being used, each naming the reading; empty when every
    one can be. Only what the rollout's guardrails and the stage's own rules read is looked at."""
    guardrails = {guardrail.name for guardrail in rollout.guardrails}
    fields = {"requests"} | {GUARDRAILS[name].needs for name in guardrails if name != "errorRate"}
    found = []
    for arm, counts in (("incumbent", incumbent), ("challenger", challenger)):
        found += [f"the {arm}'s {name}: {what}" for name, what in counts.unusable.items() if name in fields]
        found += _unusable_requests(arm, counts)
        if guardrails & {"slowRequests", "latency"}:
            found += _unusable_latency(arm, counts)
        if "predictionShift" in guardrails:
            found += [
                f"the {arm}'s predictions in bin {name!r} ({_amount(value)}) are {flaw}"
                for name, value in counts.predictions.items()
                if (flaw := _flaw(value)) is not None
            ]
    thresholds = (incumbent.slow_after, challenger.slow_after)
    if "slowRequests" in guardrails and None not in thresholds and thresholds[0] != thresholds[1]:
        found.append(
            f"the versions counted slow requests above different thresholds ({thresholds[0]:g} s and"
            f" {thresholds[1]:g} s)"
        )
    return found


def _unusable_requests(arm: str, counts: ArmCounts) -> list[str]:
    found = _unusable_count(arm, "", counts.requests, counts.errors)
    if counts.gateway_requests is not None or counts.gateway_errors is not None:
        found += _unusable_count(arm, "gateway's ", counts.gateway_requests or 0, counts.gateway_errors or 0)
    return found


def _unusable_count(arm: str, whose: str, requests: int, errors: int) -> list[str]:
    found = [
        f"the {arm}'s {whose}{name} ({_amount(value)}) are {flaw}"
        for name, value in (("requests", requests), ("errors", errors))
        if (flaw := _flaw(value)) is not None
    ]
    if not found and errors > requests:
        found.append(f"the {arm}'s {whose}errors ({errors:,}) outnumber its requests ({requests:,})")
    return found


def _unusable_latency(arm: str, counts: ArmCounts) -> list[str]:
    found = [
        f"the {arm}'s {name} ({_amount(value)}) are {flaw}"
        for name, value in (("timed requests", counts.timed), ("slow requests", counts.slow))
        if (flaw := _flaw(value)) is not None and (name == "timed requests" or counts.slow_after is not None)
    ]
    if counts.slow_after is not None:
        if isinstance(counts.slow_after, bool) or not (
            isinstance(counts.slow_after, int | float) and counts.slow_after >= 0
        ):
            found.append(f"the {arm}'s slow-request threshold ({counts.slow_after!r}) is not a latency")
        elif not found and counts.slow > counts.timed:
            found.append(f"the {arm}'s slow requests ({counts.slow:,}) outnumber its timed requests ({counts.timed:,})")
    if not counts.latency:
        return found
    if any(
        isinstance(bound, bool) or not isinstance(bound, int | float) or math.isnan(bound) for bound in counts.latency
    ):
        return [*found, f"the {arm}'s latency has a bucket boundary that is not a number"]
    buckets = sorted(counts.latency.items())
    flawed = [
        f"the {arm}'s latency bucket le={_le(bound)} ({_amount(value)}) is {flaw}"
        for bound, value in buckets
        if (flaw := _flaw(value)) is not None
    ]
    if flawed:
        return [*found, *flawed]
    # Cumulative buckets: each holds the requests of every bucket below it, and +Inf holds every timed request.
    found += [
        f"the {arm}'s latency bucket le={_le(bound)} ({value:,}) is above the bucket le={_le(above)} ({more:,})"
        for (bound, value), (above, more) in pairwise(buckets)
        if value > more
    ]
    if math.inf not in counts.latency:
        found.append(f"the {arm}'s latency has no +Inf bucket")
    elif counts.latency[math.inf] != counts.timed and _flaw(counts.timed) is None:
        found.append(
            f"the {arm}'s +Inf latency bucket ({counts.latency[math.inf]:,}) disagrees with its timed requests"
            f" ({counts.timed:,})"
        )
    return found


def _flaw(value: object) -> str | None:
    """What keeps `value` from being a count: None for a whole, finite, non-negative number a float holds exactly."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or (isinstance(value, float) and math.isnan(value))
    ):
        return "not a number"
    if value < 0:
        return "negative"
    if isinstance(value, float) and math.isinf(value):
        return "not finite"
    if value != int(value):
        return "not a whole number"
    if value > _LARGEST_COUNT:
        return "too many to count exactly"
    return None


def _amount(value: object) -> str:
    """A reading as a person reads it: whole counts with thousands separators, anything else as it is."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return repr(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if abs(value) <= _LARGEST_COUNT:
        return f"{value:,}"
    try:
        return f"{value:.3g}"
    except OverflowError:  # An int beyond any float.
        return f"{'-' if value < 0 else ''}more than 1e308"


def _le(bound: float) -> str:
    return "+Inf" if bound == math.inf else f"{bound:g}"
