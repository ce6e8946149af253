"""spec.rollout: how a new version must prove itself, and how traffic moves while it does."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, ConfigDict, Field

from steward_operator.specs.base import HOSTNAME, Duration, Metric, Model, Percent, cel, validations

# --- spec.rollout -------------------------------------------------------------------------------------------


class Traffic(Model):
    """How traffic is split and mirrored between the incumbent and the challenger."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.provider != 'traefik' || has(self.gateway) || has(self.hostnames) && size(self.hostnames) > 0",
                "the traefik provider needs gateway (an HTTPRoute on Traefik's Gateway API) or hostnames (an"
                " IngressRoute, as on k3s): without either its route would take every request Traefik receives",
                ".hostnames",
            ),
            cel(
                "self.provider != 'traefik' || !has(self.hostnames) || self.hostnames.all(host, host.matches("
                # Inside a CEL string literal, each backslash of the pattern is written twice.
                "'^" + HOSTNAME.replace("\\", "\\\\") + "$'))",
                "with the traefik provider, hostnames must be DNS names, lowercase, optionally starting with *.",
                ".hostnames",
            ),
        )
    )

    provider: Literal["gateway-api", "istio", "kserve", "traefik"] = "gateway-api"
    """gateway-api: an HTTPRoute with backend weights and a RequestMirror filter, written only when the Gateway's
    class declares mirroring (else the shadow stage holds). istio: a VirtualService with weights, mirror and
    mirrorPercentage. kserve: KServe's own canaryTrafficPercent (no shadow). traefik: a weighted and a mirroring
    TraefikService, led to by an HTTPRoute on the gateway or, without one, an IngressRoute for hostnames (k3s)."""
    gateway: str | None = Field(None, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    """The Gateway the route attaches to, as name or namespace/name (gateway-api, istio and traefik)."""
    hostnames: list[Annotated[str, Field(max_length=253)]] = Field(default_factory=list, max_length=16)
    """Host names the route answers for. Empty: all hosts of the gateway (traefik without a gateway needs some)."""


class Validation(Model):
    """The offline gate: the challenger's held-out results against the incumbent's, before any traffic."""

    enabled: bool = True
    """Run the gate. A challenger that fails it never receives traffic."""
    metric: Metric | None = None
    """Held-out metric to compare. Unset: rocAuc for classifiers, rmse for regressors."""
    tolerance: float = Field(0.0, ge=0, le=1)
    """How much worse than the incumbent the challenger may be, as a fraction of the incumbent's result
    (0.01: 1% worse)."""


class Shadow(Model):
    """Shadow phase: the challenger answers a mirrored copy of live requests; its answers are logged and
    compared, never returned."""

    percent: Percent = 100
    """Share of live requests mirrored to the challenger, 1-100."""
    min_requests: int = Field(1000, ge=1)
    """Mirrored requests needed before the shadow phase can end."""
    min_duration: Duration = "15m"
    """Shortest time in shadow, so slow-moving effects have a chance to show."""


class Canary(Model):
    """Canary phase: the challenger takes a growing share of live traffic, one step at a time."""

    steps: list[Percent] = Field(
        default_factory=lambda: [5, 25, 50],
        min_length=1,
        max_length=20,
        json_schema_extra={
            "x-kubernetes-list-type": "set",
            "x-kubernetes-validations": [
                cel("self.isSorted()", "canary steps must be strictly increasing, each within 1..99"),
                cel(
                    "self.all(step, step < 100)",
                    "canary steps must be below 100: at 100% the incumbent answers nothing, so the challenger"
                    " could not be compared with it; promotion after the last step gives it all traffic",
                ),
            ],
        },
    )
    """Challenger weights in percent, strictly increasing within 1..100 but never 100 itself: at a step the
    challenger answers that share while the incumbent answers the rest, so the two can be compared. After the
    last step the challenger is promoted to 100%. A step of 100 (which the API refuses; an older resource may
    still hold one) is taken as that promotion: the step before it is the last one judged, and without a stage
    before it that compared the two (a lower step, or shadow) the challenger is rolled back."""
    min_requests_per_step: int = Field(500, ge=1)
    """Requests the challenger must answer at a step before the step can end."""
    min_step_duration: Duration = "5m"
    """Shortest time at each step."""


class Guardrail(Model):
    """A live check that rolls the challenger back as soon as it is credibly worse than the incumbent."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.name == 'outcome' || !has(self.tolerance) || self.tolerance <= 1.0",
                "tolerance is a share or a distance, at most 1 (only outcome's is in its metric's own units)",
                ".tolerance",
            ),
            cel(
                "self.name != 'outcome' || has(self.tolerance) && self.tolerance > 0.0",
                "the outcome guardrail needs a tolerance above 0: the margin within which the challenger must be"
                " credibly no worse than the incumbent to be promoted (at 0 only a better one ever would be)",
                ".tolerance",
            ),
        )
    )

    name: Literal[
        "errorRate", "latency", "slowRequests", "predictionShift", "disagreement", "pairedAccuracy", "outcome"
    ]
    """errorRate: share of requests answered with 5xx, counted by the predictors and, where the traffic
    provider's gateway exports per-backend counts (traefik), by the gateway, whichever saw more. latency: over
    both versions' whole latency histograms, how much more often a challenger request is slower than an
    incumbent's than not (the chance it is slower, ties in a bucket counted half, less one half). slowRequests:
    share of timed requests slower than the incumbent's p95 latency (the smallest latency bucket boundary holding
    95% of its requests in the same window). predictionShift: total variation distance between the two
    prediction distributions. disagreement (shadow only): share of the same requests the challenger answers
    differently from the incumbent, as the monitor pairs them. pairedAccuracy (shadow only): on the paired
    requests whose outcome has arrived, the incumbent's accuracy less the challenger's. outcome: on the
    predictions old enough for their outcomes to have arrived (monitoring.outcome.labelDelay), each version's
    mean per-prediction loss for monitoring.outcome.metric (misclassifications for accuracy, the log loss, the
    absolute error for mae, the squared error for rmse), once each has monitoring.outcome.minLabels of them; it
    rolls back a challenger credibly worse by more than its tolerance at any stage, and holds the last stage until
    the challenger is credibly no worse within it (champion/challenger: outcomes arriving days later are the
    normal case, so give the release a rollout.maxDuration that long). A guardrail without data on both versions
    holds the release: no data is not a pass. In batch, the challenger's runs score the same rows with both
    versions: a row is a request, a rejected row an error, and disagreement counts the rows they answer
    differently; latency and slowRequests are not judged there (no row is timed)."""
    tolerance: float = Field(0.0, ge=0)
    """How much worse the challenger may be before it counts as a breach, absolute, in the metric's units (a
    share of requests, a distance, for latency a chance above one half: 0.05 lets a challenger be slower in 55%
    of pairs; for outcome the loss's own units: accuracy points, log loss, absolute or squared error). At most 1
    but for outcome, which needs one above 0. 0: any credible increase. For slowRequests, whose incumbent share is at
    most 5% by construction, 0.05 misses a 30% slower challenger; 0 catches it, with false rollbacks still
    within 1 - confidence."""


def _default_guardrails() -> list[Guardrail]:
    return [Guardrail(name="errorRate"), Guardrail(name="slowRequests")]


def _confidence_range(value: float) -> float:
    if not 0.5 <= value <= 0.999:
        raise ValueError("confidence must be within 0.5 and 0.999")
    return value


class Rollout(Model):
    """How a new version proves itself: validation, shadow, canary, and automatic promotion or rollback."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.shadow) || self.traffic.provider != 'kserve'",
                "shadow traffic is not supported by the kserve traffic provider: use gateway-api, istio or"
                " traefik, or remove rollout.shadow",
                ".shadow",
                "FieldValueForbidden",
            ),
            cel(
                "self.confidence >= 0.5 && self.confidence <= 0.999",
                "confidence must be within 0.5 and 0.999",
                ".confidence",
            ),
            cel(
                "duration(self.maxDuration) >= duration(self.canary.minStepDuration)",
                "maxDuration must be at least canary.minStepDuration",
                ".maxDuration",
            ),
        )
    )

    traffic: Traffic = Field(default_factory=Traffic)
    """Traffic splitting and mirroring."""
    validation: Validation = Field(default_factory=Validation)
    """Offline validation gate."""
    shadow: Shadow | None = None
    """Shadow phase. Unset: no shadow phase; the release goes from validation to the canary."""
    canary: Canary = Field(default_factory=Canary)
    """Canary steps."""
    guardrails: list[Guardrail] = Field(
        default_factory=_default_guardrails,
        max_length=3,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    """Checks that roll the challenger back when it is credibly worse. The significance level is split
    across them. Unset: errorRate and slowRequests, both with tolerance 0."""
    # The range is a CEL rule in the CRD: the API server's own bound check prints 0.999 as 0.
    confidence: Annotated[float, AfterValidator(_confidence_range)] = 0.95
    """Confidence of every automatic decision (1 - alpha), 0.5-0.999. The checks are anytime-valid, so
    looking after every scrape does not inflate false alarms."""
    max_duration: Duration = "24h"
    """Longest a release may take. When it runs out without a verdict, the incumbent stays."""
    progress_deadline: Duration = "10m"
    """How long the challenger may be not ready in a stage that sends it traffic (shadow or canary) before it is
    rolled back: it gets no traffic meanwhile, and a version that stops answering counts against itself."""
    rollback_window: Duration = "168h"
    """How long a replaced version stays known-good: re-applying it within this window switches back at
    once, without a new release."""
