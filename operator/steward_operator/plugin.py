"""kubectl steward: read a ModelDeployment's release and steer it. A command is a ModelCommand object, never a
write to the ModelDeployment, so Git keeps owning spec and only the operator writes status; the operator carries
it out and answers in the command's status."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from steward_operator import specs

RESOURCE = f"{specs.PLURAL}.{specs.GROUP}"
COMMAND_RESOURCE = f"{specs.COMMAND_PLURAL}.{specs.GROUP}"
EXIT_REFUSED, EXIT_USAGE, EXIT_TIMEOUT = 1, 2, 3
COMMANDS = {
    "promote": "move the release to its next stage (--full: straight to 100%)",
    "abort": "stop the release; the incumbent keeps all traffic",
    "retry": "release again a version that was rolled back, or restart the release in progress",
    "pause": "halt automatic steps (manual commands still work)",
    "resume": "let automatic steps run again",
    "rollback": "switch back to the previous version (or --to VERSION) from history",
    "retrain": "start the retraining Job from spec.retraining now (one at a time; no cooldown)",
}
EPILOG = """\
exit codes: 0 done, 1 refused by the operator, 2 usage or kubectl error, 3 not picked up in time

examples:
  kubectl steward status churn -n ml
  kubectl steward promote churn -n ml            # next canary step
  kubectl steward rollback churn --to 2024-06-01
Each command creates one ModelCommand; `kubectl steward CMD --help` shows it. Sending one needs the
steward-command role (see the README), not the right to edit ModelDeployments."""


class KubectlError(RuntimeError):
    """kubectl failed; the message is its stderr."""


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="kubectl steward",
        description="Read and steer Steward model releases.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("name", help="the ModelDeployment")
    common.add_argument("-n", "--namespace", help="its namespace (default: the context's)")
    common.add_argument("--context", help="kubeconfig context to use")
    common.add_argument("--kubeconfig", help="kubeconfig file to use")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("status", parents=[common], help="phase, versions, traffic, last evidence, owner, runbook")
    commands.add_parser(
        "history", parents=[common], help="which version and digest served, from when to when; retraining runs"
    )
    report = commands.add_parser(
        "report",
        parents=[common],
        help="an HTML report with PNG charts: release history, retraining, last decision, quality, drift",
        description="Write DIR/index.html with PNG charts of one model's release history, retraining runs, last "
        "decision, quality on matured outcomes and drift, for its owner. Quality and drift come from the monitor, "
        "through the API server's service proxy (or --monitor URL). Needs matplotlib (pip install "
        "'model-steward[report]').",
    )
    report.add_argument("--output", type=Path, help="directory to write (default: ./NAME-report; replaced whole)")
    report.add_argument(
        "--monitor-service",
        default="steward-system/steward-monitor:8080",
        metavar="NAMESPACE/SERVICE:PORT",
        help="the monitor's Service, reached through the API server (default: %(default)s)",
    )
    report.add_argument("--monitor", metavar="URL", help="the monitor's base URL, instead of the service proxy")
    for name, purpose in COMMANDS.items():
        command = commands.add_parser(
            name,
            parents=[common],
            help=purpose.replace("%", "%%"),
            description=f"{purpose}. The same as:\n  {_equivalent(name)}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if name == "promote":
            command.add_argument("--full", action="store_true", help="skip the remaining stages: promote to 100%%")
        if name == "rollback":
            command.add_argument("--to", metavar="VERSION", help="the version to switch back to (default: previous)")
        command.add_argument("--no-wait", action="store_true", help="return once written; do not wait for it")
        command.add_argument(
            "--timeout", type=float, default=30.0, metavar="SECONDS", help="how long to wait (default: %(default)s)"
        )
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    kubectl = Kubectl(args.namespace, args.context, args.kubeconfig)
    try:
        if args.command == "status":
            print(render_status(kubectl.get(args.name)))
            return 0
        if args.command == "history":
            print(render_history(kubectl.get(args.name)))
            return 0
        if args.command == "report":
            return _report(kubectl, args)
        return _command(kubectl, args)
    except KubectlError as error:
        print(f"kubectl steward: {error}", file=sys.stderr)
        return EXIT_USAGE


def command_object(name: str, action: str, to_version: str | None, who: str | None) -> dict[str, Any]:
    """The ModelCommand a command creates for the ModelDeployment `name`; the operator answers in its status."""
    spec: dict[str, Any] = {"modelDeployment": name, "action": action}
    if to_version is not None:
        spec["toVersion"] = to_version
    if who:
        spec["requestedBy"] = who
    return {
        "apiVersion": f"{specs.GROUP}/{specs.VERSION}",
        "kind": specs.COMMAND_KIND,
        "metadata": {"generateName": f"{name}-{action.lower()}-"},
        "spec": spec,
    }


def _command(kubectl: Kubectl, args: argparse.Namespace) -> int:
    action = "promoteFull" if args.command == "promote" and args.full else args.command
    kubectl.get(args.name)  # A clear "not found" before anything is sent.
    sent = kubectl.create(command_object(args.name, action, getattr(args, "to", None), kubectl.whoami()))
    command = sent["metadata"]["name"]
    print(f"{action} requested for {args.name} ({specs.COMMAND_PLURAL}/{command})")
    if args.no_wait:
        return 0
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        time.sleep(0.3)
        answer = kubectl.get(command, COMMAND_RESOURCE).get("status") or {}
        if answer.get("handledAt"):
            refused = answer.get("outcome") == "Refused"
            print(answer.get("result") or "done", file=sys.stderr if refused else sys.stdout)
            print(_summary(kubectl.get(args.name)))
            return EXIT_REFUSED if refused else 0
    print(
        f"the operator has not picked it up within {args.timeout:.0f} s; it will when it runs"
        " (check it with `kubectl get deploy -A -l app.kubernetes.io/name=steward`)",
        file=sys.stderr,
    )
    return EXIT_TIMEOUT


def render_status(body: dict[str, Any]) -> str:
    deployment = specs.ModelDeployment.model_validate(body)
    spec, status = deployment.spec, deployment.status
    metadata = body["metadata"]
    lines = [
        f"{metadata['name']} (namespace {metadata.get('namespace', '?')}), {spec.serving.mode}",
        f"owner:       {spec.owner.team} <{spec.owner.contact}>",
        f"runbook:     {spec.owner.runbook}",
        f"desired:     {spec.model.version} ({spec.model.bundle})",
        f"phase:       {_phase(spec, status)}",
        f"incumbent:   {_served(status.incumbent)}",
        f"challenger:  {_served(status.challenger)}",
    ]
    if status.weights is not None:
        weights = status.weights
        lines.append(
            f"traffic:     incumbent {weights.incumbent}%, challenger {weights.challenger}%, shadow {weights.shadow}%"
        )
    if status.rolled_back is not None:
        lines.append(f"rolled back: {_served(status.rolled_back)}")
    if status.lag:
        behind = ", ".join(
            f"{lag.version} {lag.records:,} records over {lag.partitions} partitions" for lag in status.lag
        )
        lines.append(f"lag:         {behind} (at {_time(max(lag.observed_at for lag in status.lag))})")
    for condition in status.conditions:
        if condition.type in {"Ready", "Stalled"} or condition.status == "True":
            lines.append(f"{condition.type + ':':<12} {condition.status} ({condition.reason}) {condition.message}")
    if status.last_analysis is not None:
        analysis = status.last_analysis
        lines.append(
            f"last decision: {analysis.decision} at {_time(analysis.time)} in {analysis.phase}: {analysis.rule}"
        )
        if analysis.evidence:
            lines.append(
                _table(
                    ["metric", "incumbent", "challenger", "lower", "upper", "n", "verdict"],
                    [
                        [
                            item.metric,
                            _number(item.incumbent),
                            _number(item.challenger),
                            _number(item.lower),
                            _number(item.upper),
                            f"{item.incumbent_samples or 0}/{item.challenger_samples or 0}",
                            item.verdict,
                        ]
                        for item in analysis.evidence
                    ],
                    indent="  ",
                )
            )
    if status.retrainings:
        run = status.retrainings[-1]
        ended = f", ended {_time(run.finished)}" if run.finished else ""
        lines.append(
            f"retraining:  {run.job} ({run.reason}) {run.outcome}, started {_time(run.started)}{ended}: {run.message}"
        )
    if status.operation is not None:
        done = status.operation
        outcome = f"{_time(done.handled_at)}: {done.result}" if done.handled_at else "waiting for the operator"
        lines.append(
            f"last command: {done.action} by {done.requested_by or '?'} at {_time(done.requested_at)}; {outcome}"
        )
    return "\n".join(lines)


def render_history(body: dict[str, Any]) -> str:
    status = specs.ModelDeployment.model_validate(body).status
    rows = [
        [
            entry.version,
            _digest(entry.digest),
            _time(entry.started),
            _time(entry.ended) if entry.ended else "-",
            entry.outcome,
            entry.bundle,
        ]
        for entry in reversed(status.history)
    ]
    if not rows:
        return "no version has served yet"
    text = _table(["VERSION", "DIGEST", "FROM", "UNTIL", "OUTCOME", "BUNDLE"], rows)
    if status.retrainings:
        runs = [
            [
                run.job,
                run.reason,
                run.version,
                _time(run.started),
                _time(run.finished) if run.finished else "-",
                run.outcome,
                run.message,
            ]
            for run in reversed(status.retrainings)
        ]
        text += "\n\nretraining:\n" + _table(
            ["JOB", "REASON", "VERSION", "STARTED", "FINISHED", "OUTCOME", "WHY"], runs
        )
    return text


def _report(kubectl: Kubectl, args: argparse.Namespace) -> int:
    try:
        from steward_operator import reporting  # noqa: PLC0415 -- matplotlib loads only for a report
    except ImportError as error:
        print(f"kubectl steward: the report needs {error.name}: pip install 'model-steward[report]'", file=sys.stderr)
        return EXIT_USAGE
    body = kubectl.get(args.name)
    namespace = body["metadata"].get("namespace", "")
    query = urlencode({"model": args.name, "namespace": namespace})
    monitored = reporting.Monitored()
    try:
        if args.monitor:
            quality, drift = (_fetch(f"{args.monitor.rstrip('/')}/v1/{path}?{query}") for path in ("quality", "drift"))
        else:
            service_namespace, _, service = args.monitor_service.partition("/")
            proxy = f"/api/v1/namespaces/{service_namespace}/services/{service}/proxy"
            quality, drift = (json.loads(kubectl.raw(f"{proxy}/v1/{path}?{query}")) for path in ("quality", "drift"))
        monitored = reporting.Monitored(quality=quality, drift=drift)
    except (KubectlError, OSError, ValueError) as error:
        monitored = reporting.Monitored(problem=str(error)[:500])
        print(
            f"kubectl steward: the monitor could not be read ({error}); the report has no quality or drift",
            file=sys.stderr,
        )
    output = args.output or Path(f"{args.name}-report")
    written = reporting.write(body, monitored, output)
    print(f"wrote {output / 'index.html'} ({len(written)} files)")
    return 0


def _fetch(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as response:  # noqa: S310 -- the monitor URL the user gave
        found: dict[str, Any] = json.loads(response.read())
        return found


class Kubectl:
    """The user's kubectl, with the namespace, context and kubeconfig they chose."""

    def __init__(self, namespace: str | None, context: str | None, kubeconfig: str | None) -> None:
        binary = shutil.which("kubectl")
        if binary is None:
            raise SystemExit("kubectl steward: kubectl is not on PATH")
        self.base = [binary]
        for flag, value in (("--namespace", namespace), ("--context", context), ("--kubeconfig", kubeconfig)):
            if value:
                self.base += [flag, value]

    def get(self, name: str, resource: str = RESOURCE) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self._run("get", resource, name, "-o", "json"))
        return found

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = json.loads(self._run("create", "-o", "json", "-f", "-", stdin=json.dumps(body)))
        return created

    def whoami(self) -> str | None:
        """The user name the API server knows this kubeconfig by; None where it cannot say."""
        try:
            return self._run("auth", "whoami", "-o", "jsonpath={.status.userInfo.username}").strip() or None
        except KubectlError:
            return None

    def raw(self, path: str) -> str:
        """GET a raw API path, such as a Service proxied by the API server."""
        return self._run("get", "--raw", path)

    def _run(self, *args: str, stdin: str | None = None) -> str:
        result = subprocess.run([*self.base, *args], input=stdin, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise KubectlError(result.stderr.strip() or f"kubectl {' '.join(args)} failed")
        return result.stdout


def _equivalent(action: str) -> str:
    body = command_object("NAME", action, "VERSION" if action == "rollback" else None, "YOUR-USER-NAME")
    return f"kubectl create -f - <<'EOF'\n  {json.dumps(body)}\n  EOF"


def _phase(spec: specs.ModelDeploymentSpec, status: specs.ModelDeploymentStatus) -> str:
    phase: str = status.phase or "not reconciled yet"
    if status.phase == "Canary" and status.canary_step is not None:
        steps = spec.rollout.canary.steps
        phase += f", step {status.canary_step + 1} of {len(steps)}"
    return phase + (" (paused)" if status.paused else "")


def _summary(body: dict[str, Any]) -> str:
    deployment = specs.ModelDeployment.model_validate(body)
    status = deployment.status
    weights = status.weights or specs.Weights()
    return (
        f"{body['metadata']['name']}: {_phase(deployment.spec, status)}; incumbent {weights.incumbent}%, "
        f"challenger {weights.challenger}%, shadow {weights.shadow}%"
    )


def _served(version: specs.ServedVersion | None) -> str:
    """A version, and whether replicas must load one bundle (pinned, by spec or to what its predictors reported
    first) or whatever its URI holds (unpinned, until its predictors report)."""
    if version is None:
        return "-"
    since = f", since {_time(version.since)}" if version.since else ""
    pinned = f"pinned to {_digest(version.digest)}" if version.digest else "unpinned"
    return f"{version.version} {pinned} ({version.bundle}){since}"


def _digest(digest: str | None) -> str:
    return digest[:19] + "…" if digest else "unpinned"


def _time(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _table(header: list[str], rows: list[list[str]], indent: str = "") -> str:
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join(
        indent + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    )
