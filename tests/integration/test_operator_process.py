"""The real operator as a process on a real API server: killed at any point of a release it resumes to the same end
state, and it exports its metrics in a form promtool accepts."""

from __future__ import annotations

import random
import shutil
import subprocess
import time
from typing import Any

from steward_harness.operators import Operator
from tests.support.deployments import Deployment, example, version
from tests.support.waiting import wait_until


def test_an_operator_killed_at_every_step_resumes_to_the_same_end(deploy: Any, operator: Operator) -> None:
    prices = deploy(example("full.yaml"))
    prices.wait("Stable")
    expected = [
        ("Validating", {"incumbent": 100, "challenger": 0, "shadow": 0}),
        ("Shadowing", {"incumbent": 100, "challenger": 0, "shadow": 25}),
        *[("Canary", {"incumbent": 100 - w, "challenger": w, "shadow": 0}) for w in (5, 25, 50, 75)],
        ("Promoted", {"incumbent": 100, "challenger": 0, "shadow": 0}),
    ]
    shuffle = random.Random(7)  # noqa: S311 -- timing jitter, not secrets
    try:
        for index, (phase, weights) in enumerate(expected):
            killed_before = index % 2 == 0
            if killed_before:
                operator.kill()  # The change lands while no operator runs.
            if index == 0:
                prices.apply(version(prices.manifest, "2024-08-01"))
            else:
                prices.steward("promote", "--no-wait")
            if not killed_before:
                # Killed while it works on the change: anywhere from before it reads it to after it wrote.
                time.sleep(shuffle.uniform(0.0, 0.3))
                operator.kill()
            operator.start()
            prices.wait(phase, **weights)
            _assert_consistent(prices)
    finally:
        if operator._process is None:
            operator.start()
    wait_until(lambda: prices.services() == ["house-prices--2024-08-01"])
    assert prices.route_weights() == [100]
    prices.assert_git_sees_no_drift()


def _assert_consistent(deployment: Deployment) -> None:
    """No duplicate children, and the route carries exactly the split status records."""

    def settled() -> bool:
        status = deployment.status()
        live = {status["incumbent"]["version"], *([status["challenger"]["version"]] if "challenger" in status else [])}
        names = deployment.services()
        expected = sorted(f"{deployment.name}--{v}" for v in live)
        return names == expected and len(deployment.of_kind("HTTPRoute")) == 1

    wait_until(settled)
    status = deployment.status()
    weights = status["weights"]
    route = deployment.route_weights()
    if "challenger" in status:
        assert route == [weights["incumbent"], weights["challenger"]]
    else:
        assert route == [100]
    assert (deployment.mirror_percent() or 0) == (weights["shadow"] if "challenger" in status else 0)


def test_the_operator_exports_its_metrics(deploy: Any, operator: Operator) -> None:
    churn = deploy(example("online.yaml"))
    churn.wait("Stable")
    labels = f'name="{churn.name}",namespace="{churn.namespace}"'

    def scraped() -> str | None:
        text = operator.metrics()
        return text if f'{{{labels},phase="Stable"}} 1.0' in text else None

    text = wait_until(scraped)
    assert 'steward_operator_reconciles_total{result="ok"}' in text
    assert "steward_operator_reconcile_duration_seconds_bucket" in text
    assert f'steward_operator_traffic_ratio{{{labels},role="incumbent"}} 1.0' in text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: apt-get install prometheus"
    checked = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
