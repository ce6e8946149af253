"""The Prometheus metric provider against a real Prometheus scraping real exporters: counts are exactly what was
served between two moments, across pods, restarts, new pods and scrape gaps, and an outage is "no data"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from steward_contracts.metrics import (
    PREDICTOR_PREDICTIONS,
    PREDICTOR_READY,
    PREDICTOR_REQUEST_DURATION,
    PREDICTOR_REQUESTS,
)
from steward_harness.predictors import Predictor
from steward_harness.prometheus import Prometheus as PrometheusServer
from steward_harness.servers import free_ports
from steward_operator.evidence import ArmCounts, MetricProvider, MetricsUnavailableError, metric_provider
from steward_operator.evidence.prometheus import Prometheus
from steward_predictor.metrics import LATENCY_BUCKETS
from tests.support.models import Trained, records

TIMEOUT = 2.0
# Longer than any scrape takes: a scrape that began before a moment has read every value by then.
SETTLE = 0.2


@pytest.fixture
def prometheus(request: pytest.FixtureRequest) -> Iterator[PrometheusServer]:
    """A Prometheus scraping every second, not started yet: add the test's targets, then `_watch` starts it.
    Stopped at the end; its data and log are kept when the test failed."""
    failed_before = request.session.testsfailed
    server = PrometheusServer()
    yield server
    failed = request.session.testsfailed > failed_before
    server.stop(keep=failed)
    if failed:
        print(f"\nPrometheus data and log kept in {server.directory}")


class Pod(Collector):
    """One predictor pod's /metrics as far as releases read it, with values the test sets: the predictor's
    series and labels, request counters created on first use, and prediction counters without *_created (as an
    exporter that does not say when a series began: the provider then counts from the series' first scrape)."""

    def __init__(self, version: str = "v2", model: str = "churn", *, listening: bool = True) -> None:
        self.base = {"model": model, "version": version, "variant": "challenger"}
        self.port = free_ports(1)[0]
        self._server: Any = None
        if listening:
            self.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Start as a fresh process does: every counter from zero."""
        registry = CollectorRegistry()
        self.requests = Counter(PREDICTOR_REQUESTS.name, "Requests.", PREDICTOR_REQUESTS.labels, registry=registry)
        self.latency = Histogram(
            PREDICTOR_REQUEST_DURATION.name,
            "Latency.",
            PREDICTOR_REQUEST_DURATION.labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(**self.base)
        Gauge(PREDICTOR_READY.name, "Ready.", PREDICTOR_READY.labels, registry=registry).labels(**self.base).set(1)
        self.predictions = {"x": 0, "y": 0}
        registry.register(self)
        self._registry = registry
        self.reconnect()

    def stop(self) -> None:
        """Stop answering scrapes; the counters stay as they are (a pod cut off from Prometheus)."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
            self._thread.join()

    def reconnect(self) -> None:
        """Answer scrapes again, with the counters where they are."""
        self._server, self._thread = start_http_server(self.port, addr="127.0.0.1", registry=self._registry)

    def restart(self) -> None:
        self.stop()
        self.start()

    def serve(self, times: int = 1, code: int = 200, bin: str = "x", seconds: float = 0.001) -> None:
        """Answer `times` requests as the predictor does: every one counted, the good ones timed and predicted."""
        for _ in range(times):
            self.requests.labels(**self.base, protocol="v1", code=str(code)).inc()
            if code == 200:
                self.latency.observe(seconds)
                self.predictions[bin] += 1

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            PREDICTOR_PREDICTIONS.name, "Predictions.", labels=list(PREDICTOR_PREDICTIONS.labels)
        )
        for label, value in self.predictions.items():
            family.add_metric([*self.base.values(), label], value)
        yield family


@pytest.fixture
def pods() -> Iterator[list[Pod]]:
    """Pods a test makes (append to the list); stopped at the end."""
    made: list[Pod] = []
    yield made
    for pod in made:
        pod.stop()


def _watch(prometheus: PrometheusServer, *pods: Pod, **labels: str) -> None:
    """Start Prometheus with the pods as targets, and wait until it scrapes the listening ones."""
    for pod in pods:
        prometheus.add_target(pod.address, **labels)
    prometheus.start()
    _settled(prometheus, *(pod for pod in pods if pod.listening))


def _settled(prometheus: PrometheusServer, *pods: Pod) -> float:
    """Wait until everything the pods served so far is stored, then return a moment to cut a window at: no scrape
    in flight at that moment reads what is served after it."""
    now = time.time()
    for pod in pods:
        prometheus.wait_scraped(pod.address, after=now)
    moment = time.time()
    time.sleep(SETTLE)
    return moment


def _window(provider: MetricProvider, start: float, end: float, version: str = "v2", **options: Any) -> ArmCounts:
    return asyncio.run(
        provider.window(
            "churn", version, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC), **options
        )
    )


def test_counts_are_exact_across_pods_a_restart_and_a_new_pod(prometheus: PrometheusServer, pods: list[Pod]) -> None:
    # c is a pod that comes up later; until then its scrapes fail.
    a, b, c = Pod(), Pod(), Pod(listening=False)
    pods += [a, b, c]
    _watch(prometheus, a, b, c)
    a.serve(5)
    b.serve(3)
    b.serve(code=500)
    start = _settled(prometheus, a, b)

    a.serve(2, bin="x")
    a.serve(2, bin="y")
    a.serve(1, bin="y", seconds=0.3)
    b.serve(2, bin="y")
    b.serve(2, code=500)
    _settled(prometheus, a, b)
    # b restarts: its counters start again from zero, and it serves more than before, so only the new
    # *_created timestamp shows the restart in its request counter.
    b.restart()
    _settled(prometheus, b)
    b.serve(6, bin="x")
    b.serve(1, bin="x", seconds=0.3)
    # c comes up and takes traffic before its first scrape.
    c.start()
    c.serve(2, bin="y")
    _settled(prometheus, c)
    c.serve(code=500)
    end = _settled(prometheus, a, b, c)
    a.serve(10)
    _settled(prometheus, a)

    counts = _window(Prometheus(prometheus.url, timeout=TIMEOUT), start, end, slow_after=0.2)
    assert (counts.requests, counts.errors) == (5 + (2 + 2 + 7) + (2 + 1), 2 + 1)
    assert (counts.timed, counts.slow, counts.slow_after) == (5 + 2 + 7 + 2, 2, 0.25)
    # c's request counters and latency histogram say when they were created, so its first scrape counts from
    # zero; its prediction counters do not, so what it predicted before its first scrape is not counted.
    assert counts.predictions == {"x": 2 + 7, "y": 3 + 2}
    assert (counts.targets, counts.resets) == (3, 1)
    assert counts.newest is not None
    assert counts.newest.timestamp() <= end


def test_a_pod_that_drops_out_of_scraping_and_comes_back_is_counted_exactly(
    prometheus: PrometheusServer, pods: list[Pod]
) -> None:
    pod = Pod()
    pods.append(pod)
    _watch(prometheus, pod)
    pod.serve(3)
    start = _settled(prometheus, pod)
    pod.serve(2)
    _settled(prometheus, pod)

    pod.stop()
    pod.serve(4, code=503)
    time.sleep(2.5)
    middle = time.time()
    pod.serve(1, code=503)
    pod.reconnect()
    _settled(prometheus, pod)
    pod.serve(1)
    end = _settled(prometheus, pod)

    provider = Prometheus(prometheus.url, timeout=TIMEOUT)
    counts = _window(provider, start, end)
    assert (counts.requests, counts.errors, counts.predictions) == (2 + 5 + 1, 5, {"x": 3, "y": 0})
    assert counts.gaps >= 2
    assert counts.resets == 0
    # Everything served during the gap shows at the first scrape after it, so it belongs to the window that
    # holds that scrape; adjacent windows still add up exactly.
    before, after = _window(provider, start, middle), _window(provider, middle, end)
    assert (before.requests, after.requests) == (2, 6)
    assert (before.errors + after.errors, before.predictions["x"] + after.predictions["x"]) == (5, 3)


def test_versions_and_namespaces_are_told_apart_however_they_are_spelled(
    prometheus: PrometheusServer, pods: list[Pod]
) -> None:
    odd = 'v2 "eu"\\\nß'
    plain, quoted, elsewhere = Pod("v2"), Pod(odd), Pod("v2")
    pods += [plain, quoted, elsewhere]
    prometheus.add_target(elsewhere.address, namespace="other")
    _watch(prometheus, plain, quoted, namespace="ml")
    start = _settled(prometheus, plain, quoted, elsewhere)
    plain.serve(1)
    quoted.serve(2)
    elsewhere.serve(4)
    end = _settled(prometheus, plain, quoted, elsewhere)

    provider = Prometheus(prometheus.url, timeout=TIMEOUT)
    assert _window(provider, start, end).requests == 1 + 4
    assert _window(provider, start, end, namespace="ml").requests == 1
    assert _window(provider, start, end, version=odd).requests == 2
    assert _window(provider, start, end, version="v3").requests == 0


def test_a_real_predictor_counts_good_and_refused_requests(
    prometheus: PrometheusServer, trained: dict[str, Trained]
) -> None:
    model = trained["wine"]
    with Predictor(str(model.path), name="churn") as predictor:
        assert predictor.ready()[0], predictor.tail()
        address = predictor.url.removeprefix("http://")
        prometheus.add_target(address)
        prometheus.start()
        prometheus.wait_scraped(address)
        start = time.time()
        time.sleep(SETTLE)
        rows = records(model.x_test)
        batches = [rows[:10], rows[10:25], rows[25:]]
        for batch in batches:
            status, _, body = predictor.post("/v1/models/churn:predict", {"instances": batch})
            assert status == 200, body
        for bad in ({"instances": [{"nonsense": 1}]}, {"instances": [{**rows[0], "size_band": 3}]}):
            status, _, body = predictor.post("/v1/models/churn:predict", bad)
            assert status == 400, body
        prometheus.wait_scraped(address)
        end = time.time()

    counts = _window(
        metric_provider("prometheus", prometheus.url),
        start,
        end,
        version=model.bundle.version,
        slow_after=10.0,
    )
    assert (counts.requests, counts.errors, counts.timed, counts.slow) == (3 + 2, 0, 3, 0)
    served = [str(label) for label in model.pipeline.predict(model.x_test)]
    assert counts.predictions == {label: served.count(label) for label in model.bundle.baselines.predictions.labels}
    assert sum(counts.predictions.values()) == len(rows)
    assert counts.targets == 1


def test_what_a_real_predictor_answered_before_its_first_scrape_is_counted(
    prometheus: PrometheusServer, trained: dict[str, Trained]
) -> None:
    """A new pod takes traffic before Prometheus first scrapes it: its counters' `*_created` series say they began
    at 0 inside the window, so all of it counts. Without them it would be lost to the evidence."""
    model = trained["breast-cancer"]
    start = time.time()
    time.sleep(SETTLE)
    with Predictor(str(model.path), name="churn") as predictor:
        assert predictor.ready()[0], predictor.tail()
        rows = records(model.x_test)
        status, _, body = predictor.post("/v1/models/churn:predict", {"instances": rows})
        assert status == 200, body
        address = predictor.url.removeprefix("http://")
        prometheus.add_target(address)
        prometheus.start()
        prometheus.wait_scraped(address)
        end = time.time()

    counts = _window(metric_provider("prometheus", prometheus.url), start, end, version=model.bundle.version)
    assert (counts.requests, counts.errors, counts.timed) == (1, 0, 1)
    assert sum(counts.predictions.values()) == sum(counts.scores.values()) == len(rows)
    assert (counts.targets, counts.resets) == (1, 0)


def test_an_outage_is_no_data_and_the_same_data_is_back_after_a_restart(
    prometheus: PrometheusServer, pods: list[Pod]
) -> None:
    pod = Pod()
    pods.append(pod)
    _watch(prometheus, pod)
    start = _settled(prometheus, pod)
    pod.serve(4)
    end = _settled(prometheus, pod)
    provider = Prometheus(prometheus.url, timeout=TIMEOUT)
    assert _window(provider, start, end).requests == 4

    prometheus.stop(keep=True)
    began = time.monotonic()
    with pytest.raises(MetricsUnavailableError, match=r"Prometheus at http://127\.0\.0\.1"):
        _window(provider, start, end)
    assert time.monotonic() - began < TIMEOUT
    assert not asyncio.run(provider.healthy())

    prometheus.start()
    assert asyncio.run(provider.healthy())
    assert _window(provider, start, end).requests == 4

    prometheus.freeze()
    try:
        began = time.monotonic()
        with pytest.raises(MetricsUnavailableError, match="no answer within 2 s"):
            _window(provider, start, end)
        assert time.monotonic() - began < TIMEOUT + 1
        assert not asyncio.run(provider.healthy())
    finally:
        prometheus.resume()
    assert _window(provider, start, end).requests == 4
