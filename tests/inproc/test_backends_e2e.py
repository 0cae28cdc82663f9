"""End to end over real sockets: backup backends, outlier ejection and slow start."""

from __future__ import annotations

from collections import Counter

import pytest_twisted

from tests.support.inproc import answer, backends_hit, sleep, wait_for

#: The lead removes this once the outlier ejector and slow start are wired into the service.

#: HTTP checks on /health, which these tests make fail and pass again.
FAST_CHECKS = {
    "health_path": "/health",
    "health_interval": "50ms",
    "health_timeout": "500ms",
    "health_rise": 1,
    "health_fall": 1,
}


@pytest_twisted.ensureDeferred
async def test_backup_serves_only_while_every_primary_is_down(make_backends, start_powerlb, http):
    a, b, c = make_backends(3)
    lb = start_powerlb([a, b, c.url + ",backup"], **FAST_CHECKS)
    primary_a, primary_b, backup = lb.service.backends
    assert backup.backup and not primary_a.backup
    assert sorted(set(await backends_hit(http, lb.url, 6))) == ["a", "b"]
    assert c.served() == 0

    a.routes[b"/health"] = answer(503)
    await wait_for(lambda: not primary_a.healthy)
    assert set(await backends_hit(http, lb.url, 4)) == {"b"}  # one primary is enough

    b.routes[b"/health"] = answer(503)
    await wait_for(lambda: not primary_b.healthy)
    assert set(await backends_hit(http, lb.url, 4)) == {"c"}

    a.routes[b"/health"] = lambda request: b"ok\n"
    await wait_for(lambda: primary_a.healthy)
    assert set(await backends_hit(http, lb.url, 4)) == {"a"}
    assert c.served() == 4
    stats = lb.service.stats()["backends"]
    assert [x["backup"] for x in stats] == [False, False, True]


@pytest_twisted.ensureDeferred
async def test_backend_answering_500_is_ejected_and_readmitted_after_the_back_off(
    make_backends, start_powerlb, http
):
    a, b = make_backends(2)
    a.routes[b"/"] = answer(500)
    lb = start_powerlb([a, b], outlier_failures=3, outlier_backoff="300ms", outlier_statuses="500-599")
    failing = lb.service.backends[0]
    hits = await backends_hit(http, lb.url, 6)
    assert hits == list("ababab")  # the third 500 from a ejects it
    assert failing.ejected and failing.ejections == 1
    assert set(await backends_hit(http, lb.url, 6)) == {"b"}
    assert lb.service.stats()["backends"][0]["ejected"] is True

    # After the back-off a is half-open: its next 500 ejects it again at once, for twice as long.
    await wait_for(lambda: not failing.ejected)
    assert "a" in await backends_hit(http, lb.url, 2)
    assert failing.ejected and failing.ejections == 2

    a.routes[b"/"] = a.default  # a recovers
    await sleep(0.3)
    assert failing.ejected  # 600 ms this time
    await wait_for(lambda: not failing.ejected)
    assert Counter(await backends_hit(http, lb.url, 6)) == {"a": 3, "b": 3}
    snapshot = lb.service.stats()["backends"][0]
    assert (snapshot["ejected"], snapshot["ejections"]) == (False, 2)


@pytest_twisted.ensureDeferred
async def test_connect_failures_eject_and_a_health_pass_readmits(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start_powerlb([a, b], outlier_failures=2, outlier_backoff="60s", retries=1)
    gone = lb.service.backends[0]
    port = a.port_number
    await a.stop()
    # each request fails to connect to a and is retried on b
    assert await backends_hit(http, lb.url, 4) == list("bbbb")
    assert gone.ejected and gone.ejections == 1
    a.start(port)
    await lb.service.health.check_all()  # a passing active check ends the 60 s ejection
    assert not gone.ejected
    assert sorted(await backends_hit(http, lb.url, 2)) == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_slow_start_ramps_a_returning_backend(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start_powerlb([a, b], algorithm="weighted-round-robin", slow_start="3s", **FAST_CHECKS)
    returning = lb.service.backends[0]
    assert Counter(await backends_hit(http, lb.url, 10)) == {"a": 5, "b": 5}

    a.routes[b"/health"] = answer(503)
    await wait_for(lambda: not returning.healthy)
    a.routes[b"/health"] = lambda request: b"ok\n"
    await wait_for(lambda: returning.healthy)

    # Just back: a starts at 1/16 of its weight and gains a little every 0.3 s.
    assert lb.service.stats()["backends"][0]["effective_weight"] < 0.5
    early = Counter(await backends_hit(http, lb.url, 20))
    assert early["a"] < 5
    await wait_for(lambda: returning.effective_weight == returning.full_weight, timeout=5.0)
    assert Counter(await backends_hit(http, lb.url, 20)) == {"a": 10, "b": 10}
