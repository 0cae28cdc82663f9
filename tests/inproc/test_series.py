"""The admin listener's series sampler on a task.Clock, and ``GET /api/v1/series`` over a real socket."""

from __future__ import annotations

from typing import Any, Dict

import pytest_twisted
from twisted.internet.task import Clock

from powerlb.admin import SeriesSampler
from powerlb.latency import LATENCY_BUCKETS
from powerlb.timeseries import SeriesKeeper


def traffic(requests: int, errors: int = 0) -> Dict[str, Any]:
    """A stats snapshot where backend a has answered ``requests`` (``errors`` of them 5xx)."""
    return {
        "backends": [{"url": "http://a"}],
        "responses": {"http://a": {"2xx": {"miss": requests - errors}, "5xx": {"miss": errors}}},
    }


def test_sampler_feeds_the_keeper_every_step_while_it_runs() -> None:
    clock = Clock()
    served = [traffic(0)]
    sampler = SeriesSampler(lambda: served[-1], clock, SeriesKeeper(step=2.0, window=60.0))
    sampler.startService()  # the first snapshot at once
    served.append(traffic(8))
    clock.advance(2.0)
    served.append(traffic(12, errors=2))
    clock.advance(2.0)
    sampler.stopService()
    clock.advance(10.0)  # stopped: no more samples
    pools = sampler.keeper.series()["pools"]
    assert pools["default"]["at"] == [2.0, 4.0]
    assert pools["default"]["rps"] == [4.0, 2.0]
    assert pools["default"]["error_rate"] == [0.0, 0.5]


@pytest_twisted.ensureDeferred
async def test_series_endpoint_over_a_socket(make_backends, start_powerlb, http) -> None:
    (a,) = make_backends(1)
    a.answer(b"/cached", 200, b"c", [(b"cache-control", b"max-age=60")])
    a.answer(b"/boom", 503)
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1", cache_size="1MiB")
    (sampler,) = [s for s in lb.service if isinstance(s, SeriesSampler)]
    # it sampled as it started; from now on the test samples, so no step splits the traffic
    sampler.stopService()
    for path in ("/x", "/cached", "/cached", "/cached", "/boom"):
        await (await http.get(lb.url + path)).content()
    sampler.sample()
    response = await http.get(lb.admin_url + "/api/v1/series")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    series = await response.json()
    assert series["step"] == sampler.keeper.step
    assert series["window"] == 900.0
    (pool,) = series["pools"].values()
    assert list(series["pools"]) == ["default"]
    assert len(pool["at"]) == 1 and pool["rps"][0] > 0
    assert pool["error_rate"] == [1 / 5]  # /boom
    assert pool["hit_ratio"] == [2 / 5]  # /x, /boom and the first /cached missed
    assert 0 < pool["p50"][-1] <= pool["p99"][-1] <= LATENCY_BUCKETS[-1]
    assert pool["at"][-1] == series["now"]

    refused = await http.post(lb.admin_url + "/api/v1/series")
    assert refused.code == 405
    assert refused.headers.getRawHeaders(b"allow") == [b"GET, HEAD"]
