"""What a release looked like over time: the ModelDeployment's status as sampled while it ran, told as a table
and drawn, with the predictors' error rate and predictions from Prometheus, as a PNG."""

from __future__ import annotations

import json
import math
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMELINE_COLUMNS = ("time", "phase", "incumbent", "challenger", "traffic i/c/s %", "what happened")


@dataclass(frozen=True)
class Moment:
    """One sample of a ModelDeployment's status, `at` seconds after the story began."""

    at: float
    phase: str
    incumbent: str
    challenger: str
    weights: tuple[int, int, int]
    """Incumbent, challenger and shadow (mirror) percentages."""
    decision: str = ""
    """The last automatic decision and its rule, as status records it."""
    stalled: bool = False
    condition: str = ""
    """The message of whichever of Ready, Reconciling and Stalled holds."""

    @classmethod
    def of(cls, at: float, body: dict[str, Any]) -> Moment:
        status = body.get("status") or {}
        weights = status.get("weights") or {}
        analysis = status.get("lastAnalysis") or {}
        holding = [item for item in status.get("conditions", []) if item.get("status") == "True"]
        kinds = {item.get("type") for item in holding}
        return cls(
            at=at,
            phase=str(status.get("phase", "")),
            incumbent=str((status.get("incumbent") or {}).get("version", "")),
            challenger=str((status.get("challenger") or {}).get("version", "")),
            weights=(weights.get("incumbent", 100), weights.get("challenger", 0), weights.get("shadow", 0)),
            decision=f"{analysis['decision']}: {analysis['rule']}" if analysis else "",
            stalled="Stalled" in kinds,
            condition=str(holding[0].get("message", "")) if holding else "",
        )

    def same_state(self, other: Moment) -> bool:
        """Whether nothing a reader of the timeline cares about changed between the two."""
        fields = ("phase", "incumbent", "challenger", "weights", "stalled")
        return all(getattr(self, name) == getattr(other, name) for name in fields)


@dataclass
class Timeline:
    """Every sample taken, and the moments the state changed."""

    moments: list[Moment] = field(default_factory=list)
    changes: list[Moment] = field(default_factory=list)
    chapters: list[tuple[float, str, str]] = field(default_factory=list)
    """When each part of the story began, a label for the plot, and what it did."""

    def add(self, moment: Moment) -> bool:
        """Record a sample; True when the state changed with it. A sample before the operator's first status
        write has nothing to tell."""
        if not moment.phase:
            return False
        self.moments.append(moment)
        if self.changes and moment.same_state(self.changes[-1]):
            return False
        self.changes.append(moment)
        return True

    def rows(self) -> list[list[str]]:
        """The table's rows: each chapter of the story, and each change of state with the automatic decision
        that made it (when that decision is new)."""
        told = ""
        rows: list[tuple[float, int, list[str]]] = [
            (at, 0, [f"{at:5.0f} s", "", "", "", "", f"**{text}**"]) for at, _, text in self.chapters
        ]
        for moment in self.changes:
            what = moment.decision if moment.decision and moment.decision != told else moment.condition
            told = moment.decision
            phase = moment.phase + (", stalled" if moment.stalled else "")
            weights = "/".join(str(weight) for weight in moment.weights)
            rows.append(
                (
                    moment.at,
                    1,
                    [f"{moment.at:5.0f} s", phase, moment.incumbent, moment.challenger or "-", weights, what],
                )
            )
        return [row for _, _, row in sorted(rows, key=lambda item: item[:2])]

    def markdown(self) -> str:
        lines = ["| " + " | ".join(TIMELINE_COLUMNS) + " |", "|" + "---|" * len(TIMELINE_COLUMNS)]
        lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in self.rows()]
        return "\n".join(lines) + "\n"


def write_table(timeline: Timeline, path: Path) -> None:
    _write_atomically(path, timeline.markdown().encode())


# --- from Prometheus -----------------------------------------------------------------------------------------


def query_range(
    prometheus: str, query: str, start: float, end: float, step: float
) -> dict[str, list[tuple[float, float]]]:
    """A range query's series by their `version` label: (unix seconds, value) pairs, NaN dropped."""
    form = urllib.parse.urlencode({"query": query, "start": start, "end": end, "step": step}).encode()
    request = urllib.request.Request(f"{prometheus}/api/v1/query_range", data=form, method="POST")  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 -- loopback Prometheus
        body = json.loads(response.read())
    found: dict[str, list[tuple[float, float]]] = {}
    for series in body["data"]["result"]:
        points = [(float(at), float(value)) for at, value in series["values"] if math.isfinite(float(value))]
        found[series["metric"].get("version", "?")] = points
    return found


# --- the picture ---------------------------------------------------------------------------------------------


def plot(
    timeline: Timeline,
    path: Path,
    *,
    started: float,
    errors: dict[str, list[tuple[float, float]]],
    positives: dict[str, list[tuple[float, float]]],
    title: str,
) -> None:
    """Three panels over the story's time: the traffic split the operator set, each version's 5xx rate and each
    version's share of positive predictions (both as its predictors served them, mirrored requests included),
    with the story's chapters marked. Written whole or not at all."""
    import matplotlib  # noqa: PLC0415 -- only the demo draws; importing it costs a second

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    figure, (split, failing, predicted) = plt.subplots(3, 1, figsize=(11, 9), sharex=True, constrained_layout=True)
    times = [moment.at for moment in timeline.moments]
    for index, (label, colour) in enumerate(
        (("incumbent", "tab:blue"), ("challenger (canary)", "tab:orange"), ("shadow (mirrored)", "tab:green"))
    ):
        split.step(
            times, [moment.weights[index] for moment in timeline.moments], where="post", label=label, color=colour
        )
    split.set_ylabel("traffic %")
    split.set_ylim(-5, 105)
    split.legend(loc="center right", fontsize=8)

    for panel, series, label in (
        (failing, errors, "5xx share of requests"),
        (predicted, positives, "share predicted benign"),
    ):
        for version, points in sorted(series.items()):
            panel.plot([at - started for at, _ in points], [value for _, value in points], label=version)
        panel.set_ylabel(label)
        if series:
            panel.legend(loc="upper left", fontsize=8)
    failing.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    predicted.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    predicted.set_xlabel("seconds since the story began")

    for index, (at, label, _) in enumerate(timeline.chapters):
        for panel in (split, failing, predicted):
            panel.axvline(at, color="grey", linestyle=":", linewidth=1)
        # Alternate heights, so chapters close together stay legible.
        split.annotate(label, (at, 104 + 8 * (index % 2)), fontsize=8, va="bottom", ha="left", annotation_clip=False)
    figure.suptitle(title)
    partial = path.with_suffix(".partial.png")
    figure.savefig(partial, dpi=100)
    plt.close(figure)
    os.replace(partial, path)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)
