"""kubectl steward without kubectl: the command line it accepts, the ModelCommand a command sends, and how it
shows a ModelDeployment's release and history."""

from __future__ import annotations

import copy
import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest
import yaml

from steward_operator import plugin, specs
from steward_operator.plugin import COMMANDS, Kubectl, command_object, parser, render_history, render_status
from tests.conftest import REPOSITORY

READ = ["status", "history"]
STEER = ["promote", "abort", "retry", "pause", "resume", "rollback", "retrain"]
NOW = datetime(2024, 7, 16, 9, 41, 7, 250_000, tzinfo=UTC)
OLD_DIGEST = "sha256:" + "1e" * 32
NEW_DIGEST = "sha256:0c3f9a1d2e4b5c6a7f8e9d0c1b2a3f4e5d6c7b8a9f0e1d2c3b4a5f6e7d8c9b0a"


def _body(status: dict[str, Any] | None = None, **spec: object) -> dict[str, Any]:
    """examples/full.yaml as `kubectl get -o json` returns it once applied, with `status`."""
    manifest: dict[str, Any] = yaml.safe_load((REPOSITORY / "examples" / "full.yaml").read_text())
    manifest["metadata"].update(namespace="pricing", uid="uid-1", generation=4)
    manifest["spec"].update(spec)
    if status is not None:
        manifest["status"] = status
    return manifest


def _canary_status() -> dict[str, Any]:
    """A release of 2024-07-15 at its second canary step, with the evidence of its last look."""
    return {
        "observedGeneration": 4,
        "phase": "Canary",
        "canaryStep": 1,
        "incumbent": {
            "version": "2024-06-15",
            "bundle": "s3://models/house-prices/2024-06-15/",
            "digest": OLD_DIGEST,
            "since": "2024-06-15T09:00:00Z",
        },
        "challenger": {
            "version": "2024-07-15",
            "bundle": "s3://models/house-prices/2024-07-15/",
            "digest": NEW_DIGEST,
            "since": "2024-07-16T08:00:00Z",
        },
        "weights": {"incumbent": 75, "challenger": 25, "shadow": 0},
        "lastAnalysis": {
            "time": "2024-07-16T09:30:00Z",
            "phase": "Canary",
            "decision": "continue",
            "rule": "minimum evidence not reached: 612 of 1000 requests",
            "evidence": [
                {
                    "metric": "errorRate",
                    "incumbent": 0.0102,
                    "challenger": 0.011347,
                    "lower": -0.0021,
                    "upper": 0.0043,
                    "incumbentSamples": 18234,
                    "challengerSamples": 612,
                    "verdict": "inconclusive",
                },
                {
                    "metric": "slowRequests",
                    "incumbent": 0.05,
                    "challenger": 0.048,
                    "lower": -0.02,
                    "upper": 0.01,
                    "incumbentSamples": 18234,
                    "challengerSamples": 612,
                    "verdict": "pass",
                },
                {"metric": "predictionShift", "verdict": "noData"},
            ],
        },
        "history": [
            {
                "version": "2024-05-15",
                "bundle": "s3://models/house-prices/2024-05-15/",
                "started": "2024-05-15T09:00:00Z",
                "ended": "2024-06-15T09:00:00Z",
                "outcome": "replaced",
            },
            {
                "version": "2024-06-15",
                "bundle": "s3://models/house-prices/2024-06-15/",
                "digest": OLD_DIGEST,
                "started": "2024-06-15T09:00:00Z",
                "outcome": "serving",
            },
        ],
        "operation": {
            "action": "promote",
            "requestedAt": "2024-07-16T09:00:00.000000Z",
            "requestedBy": "ana",
            "handledAt": "2024-07-16T09:00:01Z",
            "result": "2024-07-15: canary step 2 of 4, 25% of traffic",
        },
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "observedGeneration": 4,
                "lastTransitionTime": "2024-07-16T08:00:00Z",
                "reason": "Canary",
                "message": "releasing 2024-07-15: canary step 2 of 4, 25% of traffic",
            },
            {
                "type": "Reconciling",
                "status": "True",
                "observedGeneration": 4,
                "lastTransitionTime": "2024-07-16T08:00:00Z",
                "reason": "Canary",
                "message": "releasing 2024-07-15: canary step 2 of 4, 25% of traffic",
            },
            {
                "type": "Stalled",
                "status": "False",
                "observedGeneration": 4,
                "lastTransitionTime": "2024-06-15T09:00:00Z",
                "reason": "Canary",
                "message": "releasing 2024-07-15: canary step 2 of 4, 25% of traffic",
            },
        ],
    }


def _fields(text: str) -> dict[str, str]:
    """The `label: value` lines of a rendering, as a dict, with runs of spaces collapsed."""
    found = {}
    for line in text.splitlines():
        label, colon, value = line.partition(":")
        if colon and not line.startswith(" "):
            found[label.strip()] = " ".join(value.split())
    return found


def _rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines()]


# --- the command line ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", READ + STEER)
def test_every_command_takes_a_name_and_where_to_find_it(command: str) -> None:
    args = parser().parse_args([command, "churn", "-n", "ml", "--context", "prod", "--kubeconfig", "/etc/kube"])
    assert (args.command, args.name, args.namespace, args.context, args.kubeconfig) == (
        command,
        "churn",
        "ml",
        "prod",
        "/etc/kube",
    )
    assert parser().parse_args([command, "churn", "--namespace", "ml"]).namespace == "ml"
    defaults = parser().parse_args([command, "churn"])
    assert (defaults.namespace, defaults.context, defaults.kubeconfig) == (None, None, None)


@pytest.mark.parametrize("command", STEER)
def test_a_steering_command_waits_unless_told_not_to(command: str) -> None:
    waiting = parser().parse_args([command, "churn"])
    assert (waiting.no_wait, waiting.timeout) == (False, 30.0)
    told = parser().parse_args([command, "churn", "--no-wait", "--timeout", "2.5"])
    assert (told.no_wait, told.timeout) == (True, 2.5)


def test_every_steering_command_is_offered() -> None:
    assert sorted(COMMANDS) == sorted(STEER)


def test_promote_goes_to_the_next_stage_or_with_full_to_all_traffic() -> None:
    assert parser().parse_args(["promote", "churn"]).full is False
    assert parser().parse_args(["promote", "churn", "--full"]).full is True


def test_rollback_goes_to_the_previous_version_or_the_one_named() -> None:
    assert parser().parse_args(["rollback", "churn"]).to is None
    assert parser().parse_args(["rollback", "churn", "--to", "2024-06-01"]).to == "2024-06-01"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["status"],
        ["deploy", "churn"],
        ["status", "churn", "--no-wait"],
        ["history", "churn", "--timeout", "5"],
        ["abort", "churn", "--full"],
        ["promote", "churn", "--to", "v1"],
        ["pause", "churn", "--to", "v1"],
        ["rollback", "churn", "--timeout", "soon"],
    ],
)
def test_anything_else_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args(argv)
    assert exited.value.code == 2
    assert "usage: kubectl steward" in capsys.readouterr().err


@pytest.mark.parametrize("command", STEER)
def test_a_commands_help_shows_the_command_it_sends(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parser().parse_args([command, "--help"])
    assert exited.value.code == 0
    shown = capsys.readouterr().out
    assert COMMANDS[command] in shown
    (sent,) = re.findall(r"kubectl create -f - <<'EOF'\n  (.+)\n  EOF", shown)
    written = specs.ModelCommand.model_validate(json.loads(sent.replace("NAME", "churn")))
    assert (written.spec.model_deployment, written.spec.action) == ("churn", command)
    assert (written.spec.to_version is not None) == (command == "rollback")


def test_the_overview_lists_the_commands_and_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    shown = capsys.readouterr().out
    assert all(command in shown for command in READ + STEER)
    assert "0 done, 1 refused by the operator, 2 usage or kubectl error, 3 not picked up in time" in shown


# --- the command it sends ------------------------------------------------------------------------------------


def test_a_command_is_a_model_command_for_the_operator_to_answer() -> None:
    assert command_object("churn", "rollback", "2024-06-01", "ana") == {
        "apiVersion": "steward.dev/v1alpha1",
        "kind": "ModelCommand",
        "metadata": {"generateName": "churn-rollback-"},
        "spec": {"modelDeployment": "churn", "action": "rollback", "toVersion": "2024-06-01", "requestedBy": "ana"},
    }


@pytest.mark.parametrize("action", ["promote", "promoteFull", "abort", "retry", "pause", "resume", "rollback"])
def test_every_command_is_one_the_api_accepts_and_still_waits(action: str) -> None:
    sent = specs.ModelCommand.model_validate(command_object("churn", action, None, None))
    assert (sent.spec.model_deployment, sent.spec.action, sent.spec.to_version) == ("churn", action, None)
    assert sent.status == specs.ModelCommandStatus()


class _Cluster(Kubectl):
    """kubectl against one ModelDeployment whose operator answers a command as soon as it is sent."""

    def __init__(self, body: dict[str, Any], outcome: str, result: str) -> None:
        self.body, self.outcome, self.result = body, outcome, result
        self.sent: list[dict[str, Any]] = []

    def get(self, name: str, resource: str = plugin.RESOURCE) -> dict[str, Any]:
        if resource == plugin.COMMAND_RESOURCE:
            (sent,) = [command for command in self.sent if command["metadata"]["name"] == name]
            return sent
        return copy.deepcopy(self.body)

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["generateName"] + "x7k2q"
        answer = {"outcome": self.outcome, "handledAt": "2024-07-16T09:41:08Z", "result": self.result}
        self.sent.append({**body, "metadata": {"name": name}, "status": answer})
        return self.sent[-1]

    def whoami(self) -> str | None:
        return "ana@example.com"


@pytest.mark.parametrize(
    ("outcome", "result", "code"),
    [("Done", "advanced to canary step 3", 0), ("Refused", "refused: no release is in progress", 1)],
)
def test_a_command_waits_for_the_operators_answer(
    outcome: str, result: str, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster = _Cluster(_body(_canary_status()), outcome, result)
    args = parser().parse_args(["promote", "house-prices", "-n", "pricing", "--timeout", "5"])
    assert plugin._command(cluster, args) == code
    (sent,) = cluster.sent
    assert sent["spec"] == {"modelDeployment": "house-prices", "action": "promote", "requestedBy": "ana@example.com"}
    shown = capsys.readouterr()
    assert shown.out.splitlines()[0] == "promote requested for house-prices (modelcommands/house-prices-promote-x7k2q)"
    assert result in (shown.err if code else shown.out)


# --- kubectl steward status ----------------------------------------------------------------------------------


def test_status_shows_the_release_who_answers_for_it_and_the_evidence() -> None:
    shown = render_status(_body(_canary_status()))
    fields = _fields(shown)
    assert shown.splitlines()[0] == "house-prices (namespace pricing), online"
    assert fields["owner"] == "pricing-ml <pricing-ml@example.com>"
    assert fields["runbook"] == "https://runbooks.example.com/models/house-prices"
    assert fields["desired"] == "2024-07-15 (s3://models/house-prices/2024-07-15/)"
    assert fields["phase"] == "Canary, step 2 of 4"
    assert fields["incumbent"] == (
        f"2024-06-15 pinned to {OLD_DIGEST[:19]}… (s3://models/house-prices/2024-06-15/), since 2024-06-15 09:00:00 UTC"
    )
    assert fields["challenger"].startswith(
        "2024-07-15 pinned to sha256:0c3f9a1d2e4b… (s3://models/house-prices/2024-07-15/)"
    )
    assert fields["traffic"] == "incumbent 75%, challenger 25%, shadow 0%"
    assert fields["Ready"] == "False (Canary) releasing 2024-07-15: canary step 2 of 4, 25% of traffic"
    assert fields["Reconciling"].startswith("True (Canary)")
    assert fields["Stalled"].startswith("False (Canary)")
    assert "rolled back" not in fields
    assert fields["last decision"] == (
        "continue at 2024-07-16 09:30:00 UTC in Canary: minimum evidence not reached: 612 of 1000 requests"
    )
    assert fields["last command"] == (
        "promote by ana at 2024-07-16 09:00:00 UTC; 2024-07-16 09:00:01 UTC: "
        "2024-07-15: canary step 2 of 4, 25% of traffic"
    )


def test_status_tabulates_the_last_analysis_one_metric_a_row() -> None:
    shown = render_status(_body(_canary_status()))
    lines = shown.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("last decision:")) + 1
    table = [line for line in lines[start:] if line.startswith("  ")]
    assert _rows("\n".join(table)) == [
        ["metric", "incumbent", "challenger", "lower", "upper", "n", "verdict"],
        ["errorRate", "0.0102", "0.01135", "-0.0021", "0.0043", "18234/612", "inconclusive"],
        ["slowRequests", "0.05", "0.048", "-0.02", "0.01", "18234/612", "pass"],
        ["predictionShift", "-", "-", "-", "-", "0/0", "noData"],
    ]
    # A column starts at the same place in every row.
    assert len({line.index(row[1]) for line, row in zip(table, _rows("\n".join(table)), strict=True)}) == 1


def test_status_of_a_deployment_not_reconciled_yet() -> None:
    fields = _fields(render_status(_body()))
    assert fields["phase"] == "not reconciled yet"
    assert (fields["incumbent"], fields["challenger"]) == ("-", "-")
    assert "traffic" not in fields
    assert "last decision" not in fields
    assert "last command" not in fields


def test_status_says_when_paused_rolled_back_and_waiting_for_the_operator() -> None:
    status = _canary_status()
    status.update(
        phase="RolledBack",
        canaryStep=None,
        paused=True,
        challenger=None,
        rolledBack={"version": "2024-07-15", "bundle": "s3://models/house-prices/2024-07-15/"},
        weights={"incumbent": 100, "challenger": 0, "shadow": 0},
        operation={"action": "retry", "requestedAt": "2024-07-16T10:00:00Z", "requestedBy": "bo"},
    )
    status["conditions"][2].update(status="True", reason="RolledBack", message="2024-07-15 was rolled back")
    fields = _fields(render_status(_body(status)))
    assert fields["phase"] == "RolledBack (paused)"
    assert fields["challenger"] == "-"
    assert fields["rolled back"] == "2024-07-15 unpinned (s3://models/house-prices/2024-07-15/)"
    assert fields["Stalled"] == "True (RolledBack) 2024-07-15 was rolled back"
    assert fields["last command"] == "retry by bo at 2024-07-16 10:00:00 UTC; waiting for the operator"


def test_status_shows_how_far_each_version_of_a_stream_is_behind() -> None:
    status = _canary_status()
    status["lag"] = [
        {"version": "2024-06-15", "records": 12840, "partitions": 6, "observedAt": "2024-07-16T09:30:00Z"},
        {"version": "2024-07-15", "records": 12840, "partitions": 6, "observedAt": "2024-07-16T09:30:02Z"},
    ]
    fields = _fields(render_status(_body(status)))
    assert fields["lag"] == (
        "2024-06-15 12,840 records over 6 partitions, 2024-07-15 12,840 records over 6 partitions"
        " (at 2024-07-16 09:30:02 UTC)"
    )
    assert "lag" not in _fields(render_status(_body(_canary_status())))


def test_status_shows_a_condition_of_steward_only_while_it_holds() -> None:
    status = _canary_status()
    drifting = {"type": "Drifting", "lastTransitionTime": "2024-07-16T08:00:00Z", "reason": "Psi", "message": "age"}
    status["conditions"] += [{**drifting, "status": "False"}]
    assert "Drifting" not in _fields(render_status(_body(status)))
    status["conditions"][-1]["status"] = "True"
    assert _fields(render_status(_body(status)))["Drifting"] == "True (Psi) age"


# --- kubectl steward history ---------------------------------------------------------------------------------


def test_history_lists_who_served_from_when_to_when_newest_first() -> None:
    rows = _rows(render_history(_body(_canary_status())))
    assert rows[0] == ["VERSION", "DIGEST", "FROM", "UNTIL", "OUTCOME", "BUNDLE"]
    assert rows[1] == [
        "2024-06-15",
        f"{OLD_DIGEST[:19]}…",
        "2024-06-15",
        "09:00:00",
        "UTC",
        "-",
        "serving",
        "s3://models/house-prices/2024-06-15/",
    ]
    assert rows[2] == [
        "2024-05-15",
        "unpinned",
        "2024-05-15",
        "09:00:00",
        "UTC",
        "2024-06-15",
        "09:00:00",
        "UTC",
        "replaced",
        "s3://models/house-prices/2024-05-15/",
    ]
    assert len(rows) == 3


def test_history_of_a_deployment_nothing_has_served_yet() -> None:
    assert render_history(_body()) == "no version has served yet"
