"""Metric providers count what each version served from raw counter samples: restarts, scrape gaps and series
born inside a window are counted exactly, and nothing is extrapolated."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from steward_operator.evidence import (
    ArmCounts,
    Gateway,
    MetricsUnavailableError,
    UnknownProviderError,
    metric_provider,
)
from steward_operator.evidence.counting import (
    LATENCY,
    PREDICTIONS,
    READY,
    REQUESTS,
    Sample,
    Series,
    count,
    counter_increase,
    missed_scrapes,
    parse_matrix,
    quote,
    restarts,
    slow_bound,
    with_gateway,
    zero_point,
)
from steward_operator.evidence.prometheus import Prometheus, selector, traefik

# --- one counter's increase -------------------------------------------------------------------------------------


def test_a_counter_without_samples_grew_by_nothing() -> None:
    assert counter_increase([], start=0.0).value == 0


def test_the_last_sample_at_or_before_start_is_the_baseline() -> None:
    samples = [(0.0, 5.0), (10.0, 7.0), (20.0, 12.0)]
    assert counter_increase(samples, start=10.0).value == 5
    assert counter_increase(samples, start=5.0).value == 7
    assert counter_increase(samples, start=20.0).value == 0


def test_a_drop_is_a_restart_that_counted_from_zero() -> None:
    increase = counter_increase([(0.0, 10.0), (10.0, 15.0), (20.0, 3.0), (30.0, 8.0)], start=0.0)
    assert increase.value == 5 + 3 + 5
    assert increase.resets == ((10.0, 20.0),)


def test_a_new_created_timestamp_is_a_restart_even_when_the_value_rose() -> None:
    samples = [(0.0, 10.0), (10.0, 15.0), (20.0, 40.0)]
    created = {0.0: 100.0, 10.0: 100.0, 20.0: 115.0}
    increase = counter_increase(samples, start=0.0, created=created)
    assert increase.value == 5 + 40
    assert increase.resets == ((10.0, 20.0),)
    assert counter_increase(samples, start=0.0).value == 30, "without _created the restart cannot be seen"


def test_a_scrape_gap_only_lengthens_a_step() -> None:
    every_scrape = [(0.0, 5.0), (10.0, 8.0), (20.0, 11.0), (30.0, 17.0), (40.0, 20.0)]
    with_gap = [(0.0, 5.0), (40.0, 20.0)]
    assert counter_increase(every_scrape, start=0.0).value == counter_increase(with_gap, start=0.0).value == 15


def test_a_series_born_inside_the_window_counts_from_zero_when_that_is_known() -> None:
    samples = [(20.0, 4.0), (30.0, 6.0)]
    assert counter_increase(samples, start=10.0, zero_at=15.0).value == 6
    # Known to be zero before the window: the first step still ends inside it, so it belongs to it.
    assert counter_increase(samples, start=10.0, zero_at=5.0).value == 6
    # Not known: counting starts at the first sample.
    assert counter_increase(samples, start=10.0).value == 2


def test_samples_before_start_count_nothing() -> None:
    assert counter_increase([(0.0, 1.0), (5.0, 9.0)], start=5.0).value == 0
    assert counter_increase([(0.0, 1.0), (5.0, 9.0)], start=10.0, zero_at=-1.0).value == 0


_samples = st.lists(st.integers(0, 50), min_size=1, max_size=30).map(
    lambda values: [(float(moment), float(value)) for moment, value in enumerate(values)]
)


@given(samples=_samples, cuts=st.tuples(st.integers(-2, 32), st.integers(-2, 32)), born=st.booleans())
def test_adjacent_windows_add_up_exactly(samples: list[Sample], cuts: tuple[int, int], born: bool) -> None:
    first, second = sorted(cuts)
    zero_at = -0.5 if born else None

    def window(start: float, end: float) -> float:
        return counter_increase([s for s in samples if s[0] <= end], start, zero_at=zero_at).value

    assert window(first, second) + window(second, 40) == window(first, 40)


def test_a_pod_was_zero_when_created_or_when_scraped_without_the_series() -> None:
    assert zero_point(first=20.0, since=0.0, created_at=12.0, scrapes=[5.0, 10.0, 20.0]) == 12.0
    assert zero_point(first=20.0, since=0.0, created_at=None, scrapes=[5.0, 10.0, 20.0]) == 10.0
    assert zero_point(first=20.0, since=0.0, created_at=-50.0, scrapes=[5.0, 20.0]) == 5.0
    assert zero_point(first=20.0, since=0.0, created_at=None, scrapes=[20.0, 30.0]) is None
    assert zero_point(first=20.0, since=0.0, created_at=-50.0, scrapes=[20.0]) is None


def test_resets_seen_at_different_samples_of_one_restart_count_once() -> None:
    assert restarts([]) == 0
    assert restarts([(10.0, 11.0), (10.0, 14.0), (9.0, 11.0)]) == 1
    assert restarts([(10.0, 11.0), (20.0, 21.0)]) == 2


# --- scrapes, buckets, selectors --------------------------------------------------------------------------------


def test_missed_scrapes_are_judged_against_the_scrape_interval() -> None:
    assert missed_scrapes([0.0, 1.0, 2.0, 3.0], after=0.0) == 0
    assert missed_scrapes([0.0, 1.0, 2.0, 5.0, 6.0], after=0.0) == 2
    assert missed_scrapes([0.0, 1.0, 2.0, 5.0, 6.0], after=5.0) == 0, "the gap ended before the window"
    assert missed_scrapes([0.0, 5.0], after=0.0) == 0, "one spacing tells nothing"
    assert missed_scrapes([0.0, 1.003, 2.001, 2.999], after=0.0) == 0, "jitter is not a gap"


def test_a_latency_threshold_is_rounded_up_to_a_bucket_boundary() -> None:
    bounds = [0.1, 0.25, 0.5, math.inf]
    assert slow_bound(bounds, 0.25) == 0.25
    assert slow_bound(bounds, 0.2) == 0.25
    assert slow_bound(bounds, 0.0) == 0.1
    assert slow_bound([0.3, math.inf], 0.1 + 0.2) == 0.3, "float noise does not skip a boundary"
    assert slow_bound(bounds, 0.6) == math.inf


def test_label_values_are_quoted_for_promql() -> None:
    assert quote("v1") == '"v1"'
    assert quote('say "hi"') == r'"say \"hi\""'
    assert quote("a\\b") == r'"a\\b"'
    assert quote("two\nlines\ttab\ufffd") == r'"two\nlines\u0009tab\ufffd"'
    assert quote("ünïcode") == '"ünïcode"'


def test_the_selector_names_model_version_and_optionally_namespace() -> None:
    assert selector("churn", 'v"2').endswith(r',model="churn",version="v\"2"}')
    assert selector("churn", "v2", "ml").endswith(r',model="churn",version="v2",namespace="ml"}')
    assert selector("churn", "v2").startswith('{__name__=~"steward_predictor_(')


# --- a whole version ---------------------------------------------------------------------------------------------


def _series(name: str, pod: str, samples: list[Sample], **labels: str) -> Series:
    base = {"job": "steward", "instance": pod, "model": "churn", "version": "v2", "variant": "challenger"}
    return Series(name, {**base, **labels}, tuple(samples))


def _scrapes(*moments: float) -> list[Sample]:
    return [(moment, 1.0) for moment in moments]


def test_a_version_sums_its_pods_and_counts_errors_slowness_and_predictions() -> None:
    start, since = 10.0, 0.0
    series = [
        # Pod a: scraped every 5 s from the start.
        _series(READY, "a", _scrapes(0, 5, 10, 15, 20, 25)),
        _series(f"{REQUESTS}_total", "a", [(0, 3), (5, 4), (10, 6), (15, 9), (20, 10), (25, 12)], code="200"),
        _series(f"{REQUESTS}_total", "a", [(20, 2), (25, 2)], code="503"),  # born after a's scrape at 15
        _series(f"{LATENCY}_bucket", "a", [(10, 2), (25, 4)], le="0.25"),
        _series(f"{LATENCY}_bucket", "a", [(10, 6), (25, 12)], le="+Inf"),
        _series(f"{PREDICTIONS}_total", "a", [(10, 1), (25, 5)], bin="yes"),
        _series(f"{PREDICTIONS}_total", "a", [(10, 5), (25, 7)], bin="no"),
        # Pod b: new in the window; its first scrape already had traffic, which _created says to count.
        _series(READY, "b", _scrapes(17, 22)),
        _series(f"{REQUESTS}_total", "b", [(17, 4), (22, 5)], code="200"),
        _series(f"{REQUESTS}_created", "b", [(17, 16.5), (22, 16.5)], code="200"),
        _series(f"{LATENCY}_bucket", "b", [(17, 1), (22, 1)], le="0.25"),
        _series(f"{LATENCY}_bucket", "b", [(17, 4), (22, 5)], le="+Inf"),
        _series(f"{LATENCY}_created", "b", [(17, 16.5), (22, 16.5)]),
        # No _created for predictions: the first sample of a new pod is where counting starts.
        _series(f"{PREDICTIONS}_total", "b", [(17, 3), (22, 4)], bin="yes"),
    ]
    counts = count(series, start, since, slow_after=0.2)
    assert counts == ArmCounts(
        requests=(12 - 6) + 2 + 5,
        errors=2,
        timed=(12 - 6) + 5,
        slow=((12 - 6) - (4 - 2)) + (5 - 1),
        slow_after=0.25,
        latency={0.25: (4 - 2) + 1, math.inf: (12 - 6) + 5},
        predictions={"no": 2, "yes": 4 + 1},
        scores={},
        targets=2,
        series=10,
        resets=0,
        gaps=0,
        newest=datetime.fromtimestamp(25, UTC),
    )


def test_a_restart_and_a_gap_are_reported() -> None:
    series = [
        _series(READY, "a", _scrapes(0, 1, 2, 3, 7, 8, 9)),
        _series(f"{REQUESTS}_total", "a", [(0, 1), (1, 2), (2, 4), (3, 5), (7, 9), (8, 1), (9, 3)], code="500"),
        _series(f"{PREDICTIONS}_total", "a", [(0, 1), (1, 2), (2, 4), (3, 5), (7, 9), (8, 1), (9, 3)], bin="x"),
    ]
    counts = count(series, start=1.0, since=0.0, slow_after=None)
    assert (counts.requests, counts.errors, counts.predictions) == (7 + 3, 7 + 3, {"x": 10})
    assert (counts.resets, counts.gaps, counts.slow, counts.slow_after) == (1, 3, 0, None)


@pytest.mark.parametrize("spoilt", [math.nan, math.inf, -math.inf, -3.0])
def test_a_sample_that_is_no_count_is_named_not_raised(spoilt: float) -> None:
    series = [
        _series(READY, "a", _scrapes(0, 5, 10)),
        _series(f"{REQUESTS}_total", "a", [(0, 1), (5, 4), (10, 6)], code="200"),
        _series(f"{REQUESTS}_total", "a", [(0, 0), (5, spoilt), (10, 2)], code="500"),
        _series(f"{LATENCY}_bucket", "a", [(0, 1), (5, 4), (10, 6)], le="+Inf"),
    ]
    counts = count(series, start=0.0, since=0.0, slow_after=None)
    assert (counts.requests, counts.timed, counts.latency) == (5, 5, {math.inf: 5})
    assert list(counts.unusable) == ["requests"]
    assert counts.unusable["requests"].startswith(f'{REQUESTS}_total{{code="500",')
    assert f"has a sample of {spoilt} at 1970-01-01T00:00:05+00:00" in counts.unusable["requests"]


def test_samples_that_add_up_to_no_number_are_named_not_raised() -> None:
    series = [_series(f"{PREDICTIONS}_total", pod, [(0, 0), (5, 1.5e308)], bin="yes") for pod in ("a", "b")]
    counts = count(series, start=0.0, since=0.0, slow_after=None)
    assert counts.predictions == {"yes": 0}
    assert counts.unusable == {"predictions": "its samples add up to inf"}


# --- what the gateway answered ----------------------------------------------------------------------------------


def _answered(instance: str, code: str, samples: list[Sample]) -> Series:
    labels = {"job": "traefik", "instance": instance, "service": "ml-churn-v2-predictor-80@kubernetescrd"}
    return Series("traefik_service_requests_total", {**labels, "code": code, "method": "POST"}, tuple(samples))


def test_traefik_is_asked_for_the_service_it_names_after_the_version_s_predictor() -> None:
    # Traefik makes every run of characters other than letters and digits one dash: "--" and "." included.
    gateway = Gateway("traefik", "ml.team", "churn--v2-predictor", 80)
    assert traefik(gateway) == 'traefik_service_requests_total{service="ml-team-churn-v2-predictor-80@kubernetescrd"}'


def test_the_gateway_s_answers_are_summed_over_its_instances_and_status_codes() -> None:
    series = [
        # Instance a: scraped every 5 s; its first 502 appears after the scrape at 10, so it was 0 then.
        _answered("a", "200", [(0, 10), (5, 12), (10, 15), (15, 20), (20, 26)]),
        _answered("a", "502", [(15, 4), (20, 6)]),
        # Instance b restarted between 10 and 15: its counter counted from 0 again.
        _answered("b", "200", [(5, 7), (10, 9), (15, 2), (20, 5)]),
        _answered("b", "504", [(20, 1)]),  # b was scraped at 15 without it
    ]
    counts = with_gateway(ArmCounts(requests=9, errors=0), series, start=7.0, since=0.0)
    assert (counts.requests, counts.errors) == (9, 0)  # the predictors' own counts stay as they were
    assert counts.gateway_requests == (26 - 12) + 6 + (2 + 2 + 3) + 1
    assert counts.gateway_errors == 6 + 1


def test_a_gateway_that_reported_nothing_leaves_the_counts_alone() -> None:
    counts = ArmCounts(requests=3)
    assert with_gateway(counts, [], start=0.0, since=0.0) is counts


def test_a_gateway_sample_that_is_no_count_makes_the_requests_unusable() -> None:
    series = [_answered("a", "200", [(0, 1), (5, math.nan)])]
    counts = with_gateway(ArmCounts(requests=3), series, start=0.0, since=0.0)
    assert (counts.gateway_requests, counts.gateway_errors) == (None, None)
    assert counts.unusable["requests"].startswith('the gateway\'s traefik_service_requests_total{code="200",')


def test_nothing_scraped_is_zero_counts_not_an_error() -> None:
    assert count([], start=10.0, since=0.0, slow_after=0.5) == ArmCounts(slow_after=0.5)


def test_answers_that_are_not_range_vectors_are_unavailable_metrics() -> None:
    good = {"resultType": "matrix", "result": [{"metric": {"__name__": READY, "a": "b"}, "values": [[1, "1"]]}]}
    assert parse_matrix(good) == [Series(READY, {"a": "b"}, ((1.0, 1.0),))]
    for bad in (None, {}, {"resultType": "vector", "result": []}, {"resultType": "matrix", "result": [{}]}):
        with pytest.raises(MetricsUnavailableError):
            parse_matrix(bad)
    with pytest.raises(MetricsUnavailableError):
        parse_matrix({"resultType": "matrix", "result": [{"metric": {"__name__": "x"}, "values": [[1, "many"]]}]})


# --- the factory and the arguments ------------------------------------------------------------------------------


def test_providers_are_picked_by_name_and_unknown_names_fail_loudly() -> None:
    prometheus = metric_provider("prometheus", "http://prometheus:9090/")
    assert isinstance(prometheus, Prometheus)
    assert (prometheus.name, prometheus.url) == ("prometheus", "http://prometheus:9090")
    with pytest.raises(UnknownProviderError, match="unknown metric provider 'datadog': expected one of prometheus"):
        metric_provider("datadog", "https://api.datadoghq.com")


def test_a_window_needs_aware_ordered_times_and_a_sensible_threshold() -> None:
    provider = Prometheus("http://127.0.0.1:9")
    aware, later = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    naive = datetime(2026, 1, 1)  # the mistake under test
    for start, end, slow_after in ((naive, later, None), (later, aware, None), (aware, later, -1.0)):
        with pytest.raises(ValueError, match=r"window|slow_after"):
            asyncio.run(provider.window("churn", "v2", start, end, slow_after))
