"""The dashboard's series (pure): quantiles from histogram buckets, counter growth per pool, the
ring of samples. The sampler and ``GET /api/v1/series`` are in tests/inproc/test_series.py."""

from __future__ import annotations

import math
from bisect import bisect_left
from typing import Any, Dict, List, Optional, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powerlb.latency import LATENCY_BUCKETS, LatencyHistogram
from powerlb.timeseries import (
    DEFAULT_POOL,
    FIGURES,
    Reading,
    SeriesKeeper,
    growth,
    pool_growth,
    pool_of,
    quantile,
    read_snapshot,
    sample,
)

NO_LATENCY = (0,) * (len(LATENCY_BUCKETS) + 1)


def latency(**by_bound: int) -> List[int]:
    """Bucket counts with ``by_bound["b0_01"] = n`` meaning n observations in the bucket up to 0.01 s."""
    counts = list(NO_LATENCY)
    for name, count in by_bound.items():
        bound = name[1:].replace("_", ".")
        index = len(LATENCY_BUCKETS) if bound == "inf" else LATENCY_BUCKETS.index(float(bound))
        counts[index] = count
    return counts


def backend(url: str, buckets: Optional[List[int]] = None, **extra: Any) -> Dict[str, Any]:
    return {"url": url, "latency_buckets": buckets or list(NO_LATENCY), **extra}


def snapshot(backends: Sequence[Dict[str, Any]], responses: Dict[str, Any]) -> Dict[str, Any]:
    return {"backends": list(backends), "responses": responses}


# --- quantile ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "counts", "expected"),
    [
        (0.5, NO_LATENCY, None),  # no observations
        (0.5, latency(b0_001=2), 0.0005),  # the first bucket starts at 0
        (1.0, latency(b0_001=2), 0.001),
        (0.0, latency(b0_01=4), 0.005),  # the lower bound of the first non-empty bucket
        (0.5, latency(b0_01=4), 0.0075),  # half way through (0.005, 0.01]
        (0.25, latency(b0_01=4), 0.00625),
        (0.5, latency(b0_01=1, b1_0=1), 0.01),  # rank 1: the top of the first
        (0.75, latency(b0_01=1, b1_0=1), 0.75),  # rank 1.5: half way through (0.5, 1.0]
        (0.99, latency(b0_001=99, b60_0=1), 0.001),  # rank 99 closes the first bucket
        (0.999, latency(b0_001=99, b60_0=1), 30.0 + 30.0 * 0.9),  # rank 99.9 in (30, 60]
        (0.99, latency(binf=5), 60.0),  # unbounded: the last bound, all the histogram can tell
        (0.5, latency(b0_001=1, binf=1), 0.001),
        (0.99, latency(b0_001=1, binf=1), 60.0),
    ],
)
def test_quantile(q: float, counts: List[int], expected: Optional[float]) -> None:
    assert quantile(q, counts) == pytest.approx(expected)


@pytest.mark.parametrize(("q", "counts"), [(-0.1, NO_LATENCY), (1.01, NO_LATENCY), (0.5, [1, 2])])
def test_quantile_refuses_bad_arguments(q: float, counts: Sequence[int]) -> None:
    with pytest.raises(ValueError):
        quantile(q, counts)


buckets = st.lists(st.integers(0, 1000), min_size=len(NO_LATENCY), max_size=len(NO_LATENCY)).filter(any)


@settings(max_examples=300, deadline=None)
@given(buckets, st.floats(0, 1), st.floats(0, 1))
def test_quantile_is_monotone_in_q(counts: List[int], q1: float, q2: float) -> None:
    low, high = sorted((q1, q2))
    assert quantile(low, counts) <= quantile(high, counts)


@settings(max_examples=300, deadline=None)
@given(buckets, st.floats(0, 1))
def test_quantile_lies_within_the_bounds_of_the_bucket_holding_its_rank(counts: List[int], q: float) -> None:
    value = quantile(q, counts)
    bounds = (0.0, *LATENCY_BUCKETS, LATENCY_BUCKETS[-1])  # bucket i spans bounds[i]..bounds[i + 1]
    rank = q * sum(counts)
    cumulative = [sum(counts[: i + 1]) for i in range(len(counts))]
    holding = next(i for i, total in enumerate(cumulative) if counts[i] and total >= rank)
    assert bounds[holding] <= value <= bounds[holding + 1]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(0, 120), min_size=1, max_size=50), st.floats(0, 1))
def test_quantile_shares_a_bucket_with_the_nearest_rank_observation(
    observations: List[float], q: float
) -> None:
    histogram = LatencyHistogram()
    for seconds in observations:
        histogram.observe(seconds)
    nearest = sorted(observations)[max(math.ceil(q * len(observations)), 1) - 1]
    bucket = bisect_left(LATENCY_BUCKETS, nearest)  # as LatencyHistogram.observe counts it
    bounds = (0.0, *LATENCY_BUCKETS, LATENCY_BUCKETS[-1])
    assert bounds[bucket] <= quantile(q, histogram.counts) <= bounds[bucket + 1]


# --- reading snapshots and counter growth --------------------------------------------------


def test_pool_of_a_backend_entry() -> None:
    assert pool_of({"url": "http://a"}) == DEFAULT_POOL
    assert pool_of({"url": "http://a", "pool": "api"}) == "api"
    assert pool_of({"url": "http://a", "pool": ""}) == DEFAULT_POOL
    assert pool_of({"url": "http://a", "pool": 3}) == DEFAULT_POOL


def test_read_snapshot_groups_sources_and_counts_each_figure() -> None:
    reading = read_snapshot(
        snapshot(
            [backend("http://a", latency(b0_01=3)), backend("http://b", pool="api")],
            {
                "http://a": {"2xx": {"miss": 5, "none": 2}, "5xx": {"miss": 1, "none": 2}},
                "": {"2xx": {"hit": 4, "stale": 1}},
                "http://gone": {"2xx": {"bypass": 7}},
            },
        )
    )
    assert reading.pools == {
        "http://a": "default",
        "http://b": "api",
        "": "default",
        "http://gone": "default",
    }
    assert reading.counters["http://a"] == (10, 3, 0, 6, tuple(latency(b0_01=3)))
    assert reading.counters["http://b"] == (0, 0, 0, 0, NO_LATENCY)
    assert reading.counters[""] == (5, 0, 5, 0, NO_LATENCY)
    assert reading.counters["http://gone"] == (7, 0, 0, 0, NO_LATENCY)


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"backends": None, "responses": None},
        {"backends": [1, {"url": 2}, {"url": "http://a", "latency_buckets": [1, 2]}]},
        {"responses": {"http://a": {"2xx": {"hit": "many", "miss": -3, "none": True}}, "x": 5}},
    ],
)
def test_read_snapshot_counts_malformed_parts_as_zero(bad: Dict[str, Any]) -> None:
    reading = read_snapshot(bad)
    assert all(counters == (0, 0, 0, 0, NO_LATENCY) for counters in reading.counters.values())


@pytest.mark.parametrize(("now", "before", "grown"), [(5, 3, 2), (3, 3, 0), (2, 9, 0), (0, 0, 0)])
def test_growth(now: int, before: int, grown: int) -> None:
    assert growth(now, before) == grown


def test_pool_growth_sums_each_sources_growth_per_pool() -> None:
    before = Reading(
        {"a": "default", "b": "api", "gone": "api"},
        {"a": (10, 1, 0, 10, (1, 0)), "b": (50, 0, 2, 2, (0, 5)), "gone": (9, 9, 9, 9, (9, 9))},
    )
    now = Reading(
        {"a": "default", "b": "api", "new": "api"},
        {"a": (15, 2, 1, 13, (3, 0)), "b": (40, 0, 3, 2, (0, 6)), "new": (4, 1, 0, 0, (0, 1))},
    )
    assert pool_growth(now, before) == {
        "default": (5, 1, 1, 3, (2, 0)),
        # b went back (a restart): nothing; new counts from zero; gone is no more
        "api": (4, 1, 1, 0, (0, 2)),
    }


def test_sample_figures() -> None:
    grown = (20, 5, 3, 1, tuple(latency(b0_01=4)))
    assert sample(100.0, 2.0, grown) == (100.0, 10.0, 0.25, 0.0075, 0.00995, 0.75)
    assert sample(100.0, 2.0, (0, 0, 0, 0, NO_LATENCY)) == (100.0, 0.0, None, None, None, None)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 10**6), min_size=4, max_size=4),
    st.lists(st.integers(0, 10**6), min_size=4, max_size=4),
    st.lists(st.integers(0, 100), min_size=len(NO_LATENCY), max_size=len(NO_LATENCY)),
    st.floats(0.1, 60),
)
def test_sample_figures_stay_in_range(
    before: List[int], now: List[int], latency_growth: List[int], seconds: float
) -> None:
    old = Reading({"a": "default"}, {"a": (*before, NO_LATENCY)})
    new = Reading({"a": "default"}, {"a": (*now, tuple(latency_growth))})
    at = 1000.0
    figures = sample(at, seconds, pool_growth(new, old)["default"])
    assert figures.rps >= 0
    for share in (figures.error_rate, figures.hit_ratio):
        assert share is None or 0 <= share <= 1
    if figures.p50 is not None:
        assert 0 <= figures.p50 <= figures.p99 <= LATENCY_BUCKETS[-1]


# --- the keeper ----------------------------------------------------------------------------


def traffic(requests: int, errors: int = 0, **extra: Any) -> Dict[str, Any]:
    """A snapshot where backend a has answered ``requests`` (``errors`` of them 5xx), all misses."""
    return snapshot(
        [backend("http://a", latency(b0_01=requests))],
        {"http://a": {"2xx": {"miss": requests - errors}, "5xx": {"miss": errors}}},
    )


def test_keeper_samples_from_the_second_snapshot_on() -> None:
    keeper = SeriesKeeper(step=2.0, window=10.0)
    assert keeper.series() == {"step": 2.0, "window": 10.0, "now": None, "pools": {}}
    keeper.add(100.0, traffic(0))
    assert keeper.series()["pools"] == {}
    keeper.add(102.0, traffic(10, errors=1))
    keeper.add(104.0, traffic(10, errors=1))
    assert keeper.series() == {
        "step": 2.0,
        "window": 10.0,
        "now": 104.0,
        "pools": {
            "default": {
                "at": [102.0, 104.0],
                "rps": [5.0, 0.0],
                "error_rate": [0.1, None],
                "p50": [0.0075, None],
                "p99": [0.00995, None],
                "hit_ratio": [0.0, None],
            }
        },
    }


def test_keeper_keeps_the_window_and_drops_pools_gone_for_that_long() -> None:
    keeper = SeriesKeeper(step=1.0, window=5.0)
    assert keeper.capacity == 5
    with_api = snapshot([backend("http://a"), backend("http://b", pool="api")], {})
    for at in range(10):
        keeper.add(float(at), with_api)
    assert {name: ring["at"] for name, ring in keeper.series()["pools"].items()} == {
        "api": [5.0, 6.0, 7.0, 8.0, 9.0],
        "default": [5.0, 6.0, 7.0, 8.0, 9.0],
    }
    keeper.add(20.0, snapshot([backend("http://a")], {}))  # b's pool is gone; a gap of 11 s
    assert {name: ring["at"] for name, ring in keeper.series()["pools"].items()} == {"default": [20.0]}


def test_keeper_ignores_a_time_that_does_not_advance() -> None:
    keeper = SeriesKeeper(step=1.0, window=5.0)
    keeper.add(10.0, traffic(0))
    keeper.add(10.0, traffic(4))  # compared against from now on
    keeper.add(11.0, traffic(6))
    assert keeper.series()["pools"]["default"]["rps"] == [2.0]


@pytest.mark.parametrize(("step", "window"), [(0.0, 10.0), (-1.0, 10.0), (5.0, 2.0)])
def test_keeper_refuses_a_bad_step_or_window(step: float, window: float) -> None:
    with pytest.raises(ValueError, match="step"):
        SeriesKeeper(step, window)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(0.01, 100), st.integers(0, 50)), max_size=200))
def test_keeper_memory_is_bounded(steps: List[Any]) -> None:
    keeper = SeriesKeeper(step=1.0, window=30.0)
    at, requests = 0.0, 0
    for gap, more in steps:
        at, requests = at + gap, requests + more
        keeper.add(at, traffic(requests))
    for ring in keeper.series()["pools"].values():
        assert len(ring["at"]) <= keeper.capacity
        assert all(at - keeper.window < t <= at for t in ring["at"])
        assert set(ring) == {"at", *FIGURES}
