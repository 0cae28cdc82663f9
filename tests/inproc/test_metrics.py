"""Prometheus metrics at GET /metrics on the admin listener: exact figures after real traffic."""

from __future__ import annotations

from typing import Dict, Tuple

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.web.server import NOT_DONE_YET

from powerlb.latency import LATENCY_BUCKETS, LatencyHistogram
from powerlb.metrics import cumulative_buckets
from tests.support.inproc import ADMIN, Samples, exchange, fetch, headers_of, origin, scrape, sleep


def matching(samples: Samples, name: str, **labels: str) -> Dict[Tuple[Tuple[str, str], ...], float]:
    """The samples called ``name`` whose labels include ``labels``."""
    return {
        key: value
        for (sample, key), value in samples.items()
        if sample == name and set(labels.items()) <= set(key)
    }


def requests_by(samples: Samples) -> Dict[Tuple[str, str, str], float]:
    """powerlb_requests_total as (backend, code, cache) -> count."""
    return {
        (dict(key)["backend"], dict(key)["code"], dict(key)["cache"]): value
        for key, value in matching(samples, "powerlb_requests_total").items()
    }


# --- the histogram (pure) ----------------------------------------------------------------


@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), max_size=50))
def test_histogram_buckets_are_inclusive_upper_bounds_and_cumulate(values: list) -> None:
    histogram = LatencyHistogram()
    for value in values:
        histogram.observe(value)
    snapshot = histogram.snapshot()
    assert snapshot["latency_count"] == len(values)
    assert snapshot["latency_sum"] == pytest.approx(sum(values))
    pairs = cumulative_buckets(snapshot["latency_buckets"])
    assert [le for le, _ in pairs][-1] == "+Inf"
    for bound, (_, count) in zip(LATENCY_BUCKETS, pairs):
        assert count == sum(1 for value in values if value <= bound)
    assert pairs[-1][1] == len(values)


def test_histogram_bucket_edges() -> None:
    histogram = LatencyHistogram()
    for value in (0.0, 0.001, 0.0011, 60.0, 60.5):
        histogram.observe(value)
    assert histogram.counts[0] == 2  # 0 and exactly 0.001
    assert histogram.counts[1] == 1
    assert histogram.counts[len(LATENCY_BUCKETS) - 1] == 1  # exactly 60
    assert histogram.counts[-1] == 1  # +Inf


# --- end to end --------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_requests_by_backend_code_and_cache_and_latency_histogram(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    for backend in (a, b):
        backend.routes[b"/c"] = origin(b"cached", cache_control=b"max-age=60")
        backend.routes[b"/missing"] = origin(b"no such thing", status=404)
    lb = start_powerlb([a, b], admin=ADMIN)
    url_of = {"a": a.url, "b": b.url}
    expected: Dict[Tuple[str, str, str], int] = {}

    def count(key: Tuple[str, str, str]) -> None:
        expected[key] = expected.get(key, 0) + 1

    for method, path in (("GET", "/c"), ("GET", "/"), ("POST", "/"), ("GET", "/missing"), ("GET", "/")):
        response = await fetch(http, lb.url + path, method=method)
        backend = url_of[response.header(b"x-backend").decode()]
        count((backend, f"{response.code // 100}xx", response.x_cache.decode().lower()))
    # A hit on the normal way (Connection makes the request unusual) and one on the channel's short way.
    for extra in (b"Connection: keep-alive\r\n", b""):
        host = b"Host: 127.0.0.1:%d\r\n" % lb.port
        (hit,) = await exchange(lb.port, b"GET /c HTTP/1.1\r\n" + host + extra + b"\r\n")
        assert headers_of(hit)[1][b"x-cache"] == b"HIT"
        count(("", "2xx", "hit"))
    # A request powerlb answers itself, with no cache result.
    (bad,) = await exchange(lb.port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
    assert headers_of(bad)[0] == 400
    count(("", "4xx", "none"))

    samples = await scrape(http, lb)
    assert requests_by(samples) == expected
    assert ("", "2xx", "hit") in expected and ("", "4xx", "none") in expected
    assert {cache for _, _, cache in expected} == {"hit", "miss", "bypass", "none"}
    stats = lb.service.stats()
    for backend in stats["backends"]:
        url = backend["url"]
        sent = sum(n for (b_url, _, _), n in expected.items() if b_url == url)
        labels = (("backend", url), ("pool", "default"))
        assert backend["requests"] == sent
        assert samples[("powerlb_upstream_response_seconds_count", labels)] == sent
        assert samples[("powerlb_upstream_response_seconds_sum", labels)] == pytest.approx(
            backend["latency_sum"]
        )
        assert backend["latency_count"] == sent
        assert 0 < backend["latency_sum"] < 5 * sent
        inf = samples[("powerlb_upstream_response_seconds_bucket", tuple(sorted((*labels, ("le", "+Inf")))))]
        assert inf == sent
        assert samples[("powerlb_backend_up", labels)] == 1.0
        assert samples[("powerlb_backend_in_flight", labels)] == 0.0
        assert samples[("powerlb_backend_requests_total", labels)] == sent
    assert samples[("powerlb_cache_results_total", (("result", "hits"),))] == 2
    assert samples[("powerlb_cache_entries", ())] == 1
    assert samples[("powerlb_cache_evictions_total", ())] == 0
    assert samples[("powerlb_cache_bytes", ())] > 0
    assert samples[("powerlb_retries_total", ())] == 0
    assert samples[("powerlb_outlier_ejections_refused_total", ())] == 0


@pytest_twisted.ensureDeferred
async def test_two_embedded_instances_have_separate_metrics(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    one = start_powerlb([a], admin=ADMIN)
    two = start_powerlb([a], admin=ADMIN)
    for _ in range(3):
        await fetch(http, one.url + "/x")
    await fetch(http, two.url + "/y")
    first, second = await scrape(http, one), await scrape(http, two)
    assert requests_by(first) == {(a.url, "2xx", "miss"): 3}
    assert requests_by(second) == {(a.url, "2xx", "miss"): 1}
    assert first[("powerlb_upstream_response_seconds_count", (("backend", a.url), ("pool", "default")))] == 3
    assert second[("powerlb_upstream_response_seconds_count", (("backend", a.url), ("pool", "default")))] == 1


@pytest_twisted.ensureDeferred
async def test_a_hung_backend_counts_a_response_timeout(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    a.routes[b"/hang"] = lambda request: NOT_DONE_YET
    lb = start_powerlb([a], admin=ADMIN, response_timeout="0.2s", cache_size=0)
    response = await fetch(http, lb.url + "/hang")
    assert response.code == 504
    samples = await scrape(http, lb)
    timeouts = matching(samples, "powerlb_upstream_timeouts_total", backend=a.url)
    assert {dict(key)["kind"]: value for key, value in timeouts.items()} == {
        "connect": 0,
        "response": 1,
        "idle": 0,
    }
    assert requests_by(samples) == {(a.url, "5xx", "bypass"): 1}
    assert samples[("powerlb_backend_failures_total", (("backend", a.url), ("pool", "default")))] == 1
    # No response head came: nothing to time.
    assert (
        samples[("powerlb_upstream_response_seconds_count", (("backend", a.url), ("pool", "default")))] == 0
    )


@pytest_twisted.ensureDeferred
async def test_a_get_that_failed_and_was_retried_counts_a_retry(make_backends, start_powerlb, http):
    dead, alive = make_backends(2)
    await dead.stop()  # connections to it are refused: the GET goes to the other backend
    lb = start_powerlb([dead, alive], admin=ADMIN, algorithm="round-robin", cache_size=0)
    for number in range(4):
        response = await fetch(http, f"{lb.url}/r{number}")
        assert (response.code, response.header(b"x-backend")) == (200, b"b")
    samples = await scrape(http, lb)
    failures = samples[("powerlb_backend_failures_total", (("backend", dead.url), ("pool", "default")))]
    assert failures >= 1  # each refused connection sent the GET on to the other backend
    assert samples[("powerlb_retries_total", ())] == failures
    assert requests_by(samples) == {(alive.url, "2xx", "bypass"): 4}
    assert (
        samples[("powerlb_upstream_response_seconds_count", (("backend", dead.url), ("pool", "default")))]
        == 0
    )


@pytest_twisted.ensureDeferred
async def test_failing_health_checks_show_as_fail_results(make_backends, start_powerlb, http):
    sick, well = make_backends(2)
    sick.routes[b"/health"] = origin(b"not well", status=500)
    lb = start_powerlb(
        [sick, well], admin=ADMIN, health_path="/health", health_interval="0.1s", health_fall=2
    )
    for _ in range(100):  # up to 5 s: the checks run every 0.1 s
        samples = await scrape(http, lb)
        if samples[("powerlb_backend_up", (("backend", sick.url), ("pool", "default")))] == 0.0:
            break
        await sleep(0.05)
    checks = {
        (dict(key)["backend"], dict(key)["result"]): value
        for key, value in matching(samples, "powerlb_health_checks_total").items()
    }
    assert checks[(sick.url, "fail")] >= 2 and checks[(sick.url, "pass")] == 0
    assert checks[(well.url, "pass")] >= 2 and checks[(well.url, "fail")] == 0
    assert samples[("powerlb_backend_up", (("backend", well.url), ("pool", "default")))] == 1.0
    assert lb.service.stats()["backends"][0]["checks"]["fail"] == checks[(sick.url, "fail")]


@pytest_twisted.ensureDeferred
async def test_refused_ejections_are_counted(make_backends, start_powerlb, http):
    """A one-backend pool answering 502: ejecting it would leave nothing, so each due ejection is refused."""
    (lonely,) = make_backends(1)
    lonely.routes[b"/"] = origin(b"bad gateway", status=502)
    lb = start_powerlb([lonely], admin=ADMIN, outlier_failures=2, retries=0)
    for _ in range(6):
        response = await http.get(lb.url + "/")
        assert response.code == 502
        await response.content()
    samples = await scrape(http, lb)
    assert samples[("powerlb_outlier_ejections_refused_total", ())] == 3
    assert samples[("powerlb_backend_ejections_total", (("backend", lonely.url), ("pool", "default")))] == 0
    assert samples[("powerlb_backend_up", (("backend", lonely.url), ("pool", "default")))] == 1.0


@pytest_twisted.ensureDeferred
async def test_queue_waits_and_timeouts(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    held = []
    a.routes[b"/slow"] = lambda request: held.append(request) or NOT_DONE_YET
    lb = start_powerlb(
        [a], admin=ADMIN, backend_max_connections=1, backend_queue_timeout="0.2s", cache_size=0
    )
    first = defer.ensureDeferred(fetch(http, lb.url + "/slow"))  # takes the only connection, keeps it
    while not held:
        await sleep(0.01)
    queued = await fetch(http, lb.url + "/other")
    assert queued.code == 503
    held[0].write(b"done")
    held[0].finish()
    assert (await first).code == 200
    samples = await scrape(http, lb)
    labels = (("backend", a.url), ("pool", "default"))
    assert samples[("powerlb_queue_waits_total", labels)] == 1
    assert samples[("powerlb_queue_timeouts_total", labels)] == 1


@pytest_twisted.ensureDeferred
async def test_the_proxy_port_serves_no_metrics_of_its_own(make_backends, start_powerlb, http):
    """/metrics and the old /_powerlb/metrics are ordinary paths on the proxy port: they reach the backend."""
    (a,) = make_backends(1)
    lb = start_powerlb([a], admin=ADMIN, cache_size=0)
    for path in ("/metrics", "/_powerlb/metrics"):
        reply = await fetch(http, lb.url + path)
        assert (reply.code, reply.backend) == (200, "a"), path
    assert {b"/metrics", b"/_powerlb/metrics"} <= {r.uri for r in a.requests}
    counted = matching(await scrape(http, lb), "powerlb_requests_total", backend=a.url, code="2xx")
    assert sum(counted.values()) == 2
