"""`kubectl steward report`: one model's release history, retraining runs, last decision, quality and drift, as an
HTML page with PNG charts for its owner. The ModelDeployment comes from kubectl; quality and drift from the
monitor's API (through the API server's service proxy, or a URL)."""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from steward_operator import specs

LEVEL_COLOURS = {"ok": "#4c78a8", "warn": "#f2a541", "alert": "#d62728"}


@dataclass(frozen=True)
class Monitored:
    """What the monitor says of a model: quality per version, and drift per version and feature. `problem` says
    why either is missing."""

    quality: dict[str, Any] = field(default_factory=dict)
    drift: dict[str, Any] = field(default_factory=dict)
    problem: str = ""


def write(body: dict[str, Any], monitored: Monitored, output: Path, now: datetime | None = None) -> list[Path]:
    """Write index.html and its charts into `output`, whole or not at all: built aside, then moved into place
    (replacing an earlier report there). Returns the files written."""
    deployment = specs.ModelDeployment.model_validate(body)
    now = now or datetime.now(UTC)
    output.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        charts = _charts(deployment, monitored, scratch)
        (scratch / "index.html").write_text(_page(deployment, monitored, charts, now))
        if output.exists():
            shutil.rmtree(output)
        os.replace(scratch, output)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    return sorted(output.iterdir())


# --- charts --------------------------------------------------------------------------------------------------


def _charts(deployment: specs.ModelDeployment, monitored: Monitored, directory: Path) -> dict[str, str]:
    """PNG name by section; a section without data gets none."""
    import matplotlib  # noqa: PLC0415 -- only the report draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib import dates  # noqa: PLC0415

    charts = {}
    history = deployment.status.history
    if history:
        figure, axis = plt.subplots(figsize=(9, 0.6 + 0.45 * len(history)), constrained_layout=True)
        end = datetime.now(UTC)
        for row, entry in enumerate(history):
            finished = entry.ended or end
            colour = {"serving": "#2ca02c", "replaced": "#4c78a8"}.get(entry.outcome, "#d62728")
            start = dates.date2num(entry.started)  # type: ignore[no-untyped-call]
            width = dates.date2num(finished) - start  # type: ignore[no-untyped-call]
            axis.barh(row, width, left=start, color=colour)
            axis.text(start, row, f" {entry.version} ({entry.outcome})", va="center", fontsize=8)
        axis.xaxis_date()
        axis.set_yticks([])
        axis.set_title("Versions over time (UTC)")
        charts["history"] = _save(plt, figure, directory / "history.png")
    versions = monitored.quality.get("versions", {})
    metrics = sorted({metric for found in versions.values() for metric in found.get("metrics", {})})
    if metrics:
        figure, axes = plt.subplots(1, len(metrics), figsize=(3.2 * len(metrics), 3), constrained_layout=True)
        for axis, metric in zip(axes if len(metrics) > 1 else [axes], metrics, strict=True):
            names = [name for name, found in sorted(versions.items()) if metric in found.get("metrics", {})]
            axis.bar(names, [versions[name]["metrics"][metric] for name in names], color="#4c78a8")
            axis.set_title(metric)
        figure.suptitle("Quality on matured outcomes, by version")
        charts["quality"] = _save(plt, figure, directory / "quality.png")
    incumbent = deployment.status.incumbent.version if deployment.status.incumbent else None
    drift = monitored.drift.get("versions", {}).get(incumbent or "", {})
    features = drift.get("features", {})
    if features:
        names = sorted(features, key=lambda name: features[name]["psi"], reverse=True)[:30]
        figure, axis = plt.subplots(figsize=(9, 0.6 + 0.3 * len(names)), constrained_layout=True)
        axis.barh(
            names[::-1],
            [features[name]["psi"] for name in names[::-1]],
            color=[LEVEL_COLOURS.get(features[name]["level"], "#999999") for name in names[::-1]],
        )
        axis.set_xlabel("PSI against the training bins (last window)")
        axis.set_title(f"Drift of {incumbent}: orange warn, red alert (significant after Benjamini-Hochberg)")
        charts["drift"] = _save(plt, figure, directory / "drift.png")
    return charts


def _save(plt: Any, figure: Any, path: Path) -> str:
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path.name


# --- the page ------------------------------------------------------------------------------------------------


def _page(deployment: specs.ModelDeployment, monitored: Monitored, charts: dict[str, str], now: datetime) -> str:
    spec, status = deployment.spec, deployment.status
    name = deployment.metadata.get("name", "?")
    namespace = deployment.metadata.get("namespace", "?")
    incumbent = status.incumbent.version if status.incumbent else "-"
    parts = [
        f"<h1>{_e(name)} <small>({_e(namespace)})</small></h1>",
        "<p>"
        + " · ".join(
            [
                f"owner {_e(spec.owner.team)} &lt;{_e(spec.owner.contact)}&gt;",
                f'<a href="{_e(spec.owner.runbook)}">runbook</a>',
                f"phase <b>{_e(status.phase or '-')}</b>",
                f"serving <b>{_e(incumbent)}</b>",
                f"report of {now:%Y-%m-%d %H:%M} UTC",
            ]
        )
        + "</p>",
        "<h2>Conditions</h2>",
        _table(
            ["type", "status", "reason", "message"],
            [[item.type, item.status, item.reason, item.message] for item in status.conditions],
        ),
        "<h2>Release history</h2>",
        _image(charts, "history"),
        _table(
            ["version", "from", "until", "outcome", "bundle"],
            [
                [entry.version, _when(entry.started), _when(entry.ended), entry.outcome, entry.bundle]
                for entry in reversed(status.history)
            ],
        ),
    ]
    if status.last_analysis is not None:
        analysis = status.last_analysis
        parts += [
            "<h2>Last decision</h2>",
            f"<p><b>{_e(analysis.decision)}</b> in {_e(analysis.phase)} at {_when(analysis.time)}:"
            f" {_e(analysis.rule)}</p>",
            _table(
                ["metric", "incumbent", "challenger", "lower", "upper", "n", "verdict"],
                [
                    [
                        item.metric,
                        _number(item.incumbent),
                        _number(item.challenger),
                        _number(item.lower),
                        _number(item.upper),
                        f"{item.incumbent_samples or 0} / {item.challenger_samples or 0}",
                        item.verdict,
                    ]
                    for item in analysis.evidence
                ],
            ),
        ]
    parts += ["<h2>Retraining</h2>"]
    parts.append(
        _table(
            ["job", "reason", "version", "started", "finished", "outcome", "why"],
            [
                [run.job, run.reason, run.version, _when(run.started), _when(run.finished), run.outcome, run.message]
                for run in reversed(status.retrainings)
            ],
        )
        if status.retrainings
        else "<p>No retraining has run.</p>"
    )
    parts += ["<h2>Quality on matured outcomes</h2>"]
    if monitored.problem:
        parts.append(f"<p><i>The monitor could not be read: {_e(monitored.problem)}</i></p>")
    versions = monitored.quality.get("versions", {})
    parts += [
        _image(charts, "quality"),
        _table(
            ["version", "predictions", "labelled", "coverage", "label delay p50", "metrics"],
            [
                [
                    version,
                    str(found.get("predictions", 0)),
                    str(found.get("labelled", 0)),
                    f"{found.get('coverage', 0):.1%}",
                    _duration((found.get("labelDelaySeconds") or {}).get("p50")),
                    ", ".join(f"{metric} {value:.4g}" for metric, value in sorted(found.get("metrics", {}).items())),
                ]
                for version, found in sorted(versions.items())
            ],
        )
        if versions
        else "<p>No predictions with outcomes yet.</p>",
        "<h2>Drift</h2>",
        _image(charts, "drift"),
    ]
    drift = monitored.drift.get("versions", {}).get(incumbent, {})
    features = drift.get("features", {})
    parts.append(
        _table(
            ["feature", "PSI", "p-value", "values", "level", "sustained"],
            [
                [
                    feature,
                    f"{found['psi']:.4f}",
                    f"{found['pValue']:.3g}",
                    str(found["samples"]),
                    found["level"],
                    "yes" if feature in drift.get("alerting", []) else "",
                ]
                for feature, found in sorted(features.items(), key=lambda item: -item[1]["psi"])
            ],
        )
        if features
        else "<p>No drift window has been judged for the serving version yet.</p>"
    )
    style = (
        "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;"
        "font-size:.9em;text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}"
    )
    title = f"{_e(name)}: Steward report"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_e(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(charts: dict[str, str], section: str) -> str:
    return f'<p><img src="{charts[section]}" alt="{section}"></p>' if section in charts else ""


def _e(text: object) -> str:
    return html.escape(str(text))


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else f"{moment:%Y-%m-%d %H:%M} UTC"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    days, rest = divmod(int(seconds), 86_400)
    return f"{days}d {rest // 3600}h" if days else f"{rest // 3600}h {rest % 3600 // 60}m"
