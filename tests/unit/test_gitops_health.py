"""What Argo CD and Flux see of a ModelDeployment at each moment of its life: the chart's Argo CD health script run
on Lua 5.1, and kstatus (Flux) on the same objects, agreeing under one mapping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from steward_operator import specs
from tests.support.gitops import INVALID_HEALTH, KSTATUS_OF, LuaScriptError, argocd_health, kstatus_verdicts

FIXTURES = Path(__file__).resolve().parents[1] / "gitops"

# Argo CD's health of each fixture (tests/gitops/<name>.yaml) and its message, word for word.
EXPECTED = {
    "applied": ("Progressing", "waiting for the Steward operator to take up v7"),
    "pending": ("Progressing", "waiting for v7 to become ready"),
    "stable": ("Healthy", "v7 serves all traffic"),
    "drifting": ("Healthy", "v7 serves all traffic; sustained drift in v7: tenure, monthly_charges"),
    "paused-stable": ("Healthy", "v7 serves all traffic (paused)"),
    "generation-lag": (
        "Progressing",
        "waiting for the Steward operator to act on generation 2 (spec.model v8); status is for generation 1",
    ),
    "paused-new-version": ("Suspended", "paused: v8 waits for `kubectl steward resume`"),
    "validating": ("Progressing", "releasing v8: offline validation against the incumbent"),
    "shadowing": ("Progressing", "releasing v8: shadow, 50% of requests mirrored"),
    "canary": ("Progressing", "releasing v8: canary step 2 of 3, 25% of traffic"),
    "metrics-unavailable": (
        "Progressing",
        "releasing v8: canary step 2 of 3, 25% of traffic; automatic decisions wait: metrics are unavailable: the"
        " live counts of canary step 2 of 3 (25%) could not be read; an outage neither promotes nor rolls back, so"
        " the release waits until they can be read again",
    ),
    "paused-release": (
        "Suspended",
        "releasing v8: canary step 2 of 3, 25% of traffic; paused: it waits for `kubectl steward resume` or a command",
    ),
    "promoted": ("Healthy", "v8 serves all traffic"),
    "rolled-back": (
        "Degraded",
        "v8 was rolled back and v7 serves; change spec.model or run `kubectl steward retry` to release it again."
        " Why: guardrail errorRate failed in canary step 2 of 3 (25%): challenger 4.73% against incumbent 0.11% over"
        " 2,031 and 6,120 requests, an increase of at least 3.08 percentage points, above the tolerance of 0.00"
        " percentage points at alpha 0.025; roll back",
    ),
    "rolling-back": ("Progressing", "switching back to v7; it takes all traffic once it is ready"),
    "version-reused": (
        "Degraded",
        "spec.model names version v8 with another bundle or digest than the one that serves under that version;"
        " give the new bundle a new version",
    ),
    "kind-not-installed": (
        "Degraded",
        "HTTPRoute (gateway.networking.k8s.io/v1) is not installed in this cluster: install it (KServe, Gateway API,"
        " Istio or Traefik), or choose another spec.rollout.traffic.provider",
    ),
    "streaming": ("Degraded", "streaming serving is not supported yet"),
    "deleting": ("Progressing", "being deleted; its serving objects go with it"),
}

# Where kstatus cannot agree, and why.
DIVERGES: dict[str, str] = {}


def _fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((FIXTURES / f"{name}.yaml").read_text())
    return loaded


def _names() -> list[str]:
    return sorted(path.stem for path in FIXTURES.glob("*.yaml"))


def test_every_fixture_has_its_expected_health() -> None:
    assert _names()
    assert set(_names()) == set(EXPECTED)


@pytest.mark.parametrize("name", _names())
def test_fixtures_hold_exactly_what_the_operator_writes(name: str) -> None:
    # The operator writes status as this dump of its own model: a field it never writes would not survive it.
    obj = _fixture(name)
    deployment = specs.ModelDeployment.model_validate(obj)
    if name == "applied":
        # Not the operator's yet: the CRD's default, which the operator reads as no status at all.
        assert obj["status"] == {"observedGeneration": 0}
    elif "status" in obj:
        assert deployment.status.model_dump(mode="json", by_alias=True, exclude_none=True) == obj["status"]


@pytest.mark.parametrize("name", _names())
def test_argo_cd_health_at_each_moment(name: str) -> None:
    assert argocd_health(_fixture(name)) == EXPECTED[name]


@pytest.fixture(scope="module")
def kstatus_of_fixtures() -> dict[str, tuple[str, str]]:
    """kstatus' verdict on every fixture, from one run. The first run on a machine builds the Go program (about two
    minutes with nothing cached; no server is started), later ones take it from the cache."""
    names = _names()
    return dict(zip(names, kstatus_verdicts(_fixture(name) for name in names), strict=True))


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=DIVERGES[name])) if name in DIVERGES else name
        for name in _names()
    ],
)
def test_kstatus_agrees_with_argo_cd(name: str, kstatus_of_fixtures: dict[str, tuple[str, str]]) -> None:
    health, message = argocd_health(_fixture(name))
    status, said = kstatus_of_fixtures[name]
    assert status in KSTATUS_OF[health], f"Argo CD: {health} ({message}); kstatus: {status} ({said})"
    if status == "Failed":
        # Both read the Stalled condition: Flux shows the operator's own words too.
        assert message.startswith(said)


def test_kstatus_messages_survive_any_line_separator() -> None:
    said = ["paused: v8\x85waits", "v7\u2028serves", "v7\rserves"]
    objs = [
        {"apiVersion": "steward.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "churn"}}
        | {"status": {"conditions": [{"type": "Stalled", "status": "True", "reason": "Paused", "message": message}]}}
        for message in said
    ]
    assert kstatus_verdicts(objs) == [("Failed", message) for message in said]


# --- the script as Argo CD runs it ------------------------------------------------------------------------------------


def _script(tmp_path: Path, source: str) -> Path:
    path = tmp_path / "health.lua"
    path.write_text(source)
    return path


def test_scripts_run_on_lua_5_1(tmp_path: Path) -> None:
    script = _script(tmp_path, 'return {status = "Healthy", message = _VERSION}')
    assert argocd_health({}, script) == ("Healthy", "Lua 5.1")


@pytest.mark.parametrize(
    "source",
    [
        'return {status = "Healthy", message = string.format("%d", 1)}',
        'return {status = "Healthy", message = ("v7"):upper()}',
        'return {status = "Healthy", message = tostring(math.floor(1.5))}',
        'return {status = "Healthy", message = os.getenv("HOME")}',
        'return {status = "Healthy", message = io.read()}',
    ],
)
def test_scripts_get_no_library_argo_cd_leaves_out(tmp_path: Path, source: str) -> None:
    with pytest.raises(LuaScriptError, match=r"health\.lua"):
        argocd_health({}, _script(tmp_path, source))


def test_a_status_argo_cd_does_not_know_comes_out_unknown(tmp_path: Path) -> None:
    script = _script(tmp_path, 'return {status = "Serving", message = "v7"}')
    assert argocd_health({}, script) == ("Unknown", INVALID_HEALTH)


def test_a_script_that_returns_no_table_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(LuaScriptError, match="not a table"):
        argocd_health({}, _script(tmp_path, 'return "Healthy"'))


# --- any status the CRD allows ----------------------------------------------------------------------------------------

_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
_PHASES = st.sampled_from(
    ["Pending", "Stable", "Validating", "Shadowing", "Canary", "Promoted", "RolledBack", "Failed"]
)
_TIME = st.sampled_from(["2025-03-07T09:43:00Z", "2025-03-07T09:44:00Z"])


def _optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Dicts holding any subset of `fields`."""
    return st.fixed_dictionaries({}, optional=fields)


_CONDITION = _optional(
    type=st.sampled_from(["Ready", "Reconciling", "Stalled", "Drifting", "Available"]),
    status=st.sampled_from(["True", "False", "Unknown"]),
    reason=st.sampled_from(["Stable", "Canary", "Paused", "RolledBack", "KindNotInstalled"]),
    message=_TEXT,
    observedGeneration=st.integers(0, 4),
)
_STATUS = _optional(
    observedGeneration=st.integers(0, 4),
    phase=_PHASES,
    paused=st.booleans(),
    conditions=st.lists(_CONDITION, max_size=5),
    lastAnalysis=_optional(
        decision=st.sampled_from(["continue", "rollback", "pause"]), rule=_TEXT, time=_TIME, phase=_PHASES
    ),
    rolledBack=_optional(version=_TEXT, since=_TIME),
)
_OBJECT = st.fixed_dictionaries(
    {
        "apiVersion": st.just("steward.dev/v1alpha1"),
        "kind": st.just("ModelDeployment"),
        "metadata": _optional(
            name=st.just("churn"), generation=st.integers(1, 4), deletionTimestamp=st.just("2025-03-09T17:30:00Z")
        ),
        "spec": _optional(model=_optional(version=_TEXT)),
    },
    optional={"status": _STATUS},
)


@settings(max_examples=300, deadline=None)
@given(_OBJECT)
def test_any_object_gets_a_health_argo_cd_accepts_and_says_why(obj: dict[str, Any]) -> None:
    health, message = argocd_health(obj)
    assert health in KSTATUS_OF
    assert isinstance(message, str)


def _three(holding: str, reason: str, message: str) -> list[dict[str, Any]]:
    """Ready, Reconciling and Stalled as the operator writes them: exactly one holds, all say the same."""
    return [
        {"type": kind, "status": "True" if kind == holding else "False", "reason": reason, "message": message}
        for kind in ("Ready", "Reconciling", "Stalled")
    ]


_WRITTEN = st.builds(
    lambda generation, observed, holding, reason, message, phase, paused, deleting, drifting: {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "churn", "generation": generation}
        | ({"deletionTimestamp": "2025-03-09T17:30:00Z"} if deleting else {}),
        "status": {
            "observedGeneration": observed,
            "phase": phase,
            "paused": paused,
            "conditions": _three(holding, reason, message) + drifting,
        },
    },
    st.integers(1, 3),
    st.integers(1, 3),
    st.sampled_from(["Ready", "Reconciling", "Stalled"]),
    st.sampled_from(["Stable", "Canary", "Paused", "RollingBack", "WaitingForReady", "RolledBack"]),
    _TEXT,
    _PHASES,
    st.booleans(),
    st.booleans(),
    st.lists(_CONDITION.map(lambda condition: condition | {"type": "Drifting"}), max_size=1),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_WRITTEN, min_size=1, max_size=8))
def test_kstatus_agrees_on_any_status_the_operator_can_write(objs: list[dict[str, Any]]) -> None:
    for obj, (status, said) in zip(objs, kstatus_verdicts(objs), strict=True):
        health, message = argocd_health(obj)
        assert status in KSTATUS_OF[health], f"{obj}: Argo CD {health} ({message}); kstatus {status} ({said})"
