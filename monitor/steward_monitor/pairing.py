"""Two versions' answers to the same requests, compared: how often they agree, how far apart their scores are,
and, on the requests whose outcome has arrived, which one was right where they differ (McNemar's exact test).
Pairs come from shadow traffic: a mirrored request carries the incumbent's request id to the challenger."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from scipy.stats import binomtest

from steward_monitor.records import Label, class_label


@dataclass(frozen=True)
class Pair:
    """One request answered by both versions, with its outcome when it has arrived."""

    incumbent: Label
    challenger: Label
    incumbent_score: float | None = None
    challenger_score: float | None = None
    label: Label | None = None


@dataclass(frozen=True)
class Paired:
    """The comparison. Where outcomes are known, `only_incumbent` counts the requests only the incumbent got
    right and `only_challenger` those only the challenger did; McNemar's p-value says how surprising that split
    would be if both were equally good."""

    pairs: int
    agreement: float | None
    mean_score_difference: float | None
    """Challenger's score minus the incumbent's, averaged over pairs with both scores."""
    disagreements: int = 0
    labelled: int = 0
    incumbent_accuracy: float | None = None
    challenger_accuracy: float | None = None
    only_incumbent: int = 0
    only_challenger: int = 0
    p_value: float | None = None


def compare(pairs: Sequence[Pair]) -> Paired:
    if not pairs:
        return Paired(0, None, None)
    disagreements = sum(not _same(pair.incumbent, pair.challenger) for pair in pairs)
    differences = [
        pair.challenger_score - pair.incumbent_score
        for pair in pairs
        if pair.challenger_score is not None and pair.incumbent_score is not None
    ]
    labelled = [pair for pair in pairs if pair.label is not None]
    paired = Paired(
        pairs=len(pairs),
        agreement=1 - disagreements / len(pairs),
        disagreements=disagreements,
        mean_score_difference=sum(differences) / len(differences) if differences else None,
        labelled=len(labelled),
    )
    if not labelled:
        return paired
    right_i = [_same(pair.incumbent, pair.label) for pair in labelled]
    right_c = [_same(pair.challenger, pair.label) for pair in labelled]
    only_i = sum(i and not c for i, c in zip(right_i, right_c, strict=True))
    only_c = sum(c and not i for i, c in zip(right_i, right_c, strict=True))
    discordant = only_i + only_c
    return Paired(
        **{
            **paired.__dict__,
            "incumbent_accuracy": sum(right_i) / len(labelled),
            "challenger_accuracy": sum(right_c) / len(labelled),
            "only_incumbent": only_i,
            "only_challenger": only_c,
            "p_value": float(binomtest(only_c, discordant, 0.5).pvalue) if discordant else 1.0,
        }
    )


def _same(first: Label | None, second: Label | None) -> bool:
    return class_label(first) == class_label(second)
