"""End to end: real backends, a real powerlb and real clients on 127.0.0.1."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.web.server import NOT_DONE_YET

from tests.support.inproc import backends_hit, fetch, sleep, wait_for


@pytest_twisted.ensureDeferred
async def test_round_robin_cycles_over_backends_in_order(make_backends, start_powerlb, http):
    lb = start_powerlb(make_backends(3), algorithm="round-robin")
    assert await backends_hit(http, lb.url, 7) == list("abcabca")


@pytest_twisted.ensureDeferred
async def test_smooth_weighted_round_robin_sequence_over_sockets(make_backends, start_powerlb, http):
    a, b, c = make_backends(3)
    lb = start_powerlb([a.url + ",weight=5", b, c], algorithm="weighted-round-robin")
    assert await backends_hit(http, lb.url, 14) == list("aabacaa" * 2)


@pytest_twisted.ensureDeferred
async def test_least_connections_sends_to_the_idle_backend_and_counts_are_real(
    make_backends, start_powerlb, http
):
    a, b = make_backends(2)
    held: Dict[str, List[Any]] = {"a": [], "b": []}
    for backend in (a, b):
        backend.routes[b"/hold"] = lambda r, name=backend.name: (held[name].append(r), NOT_DONE_YET)[1]
    # no cache: two concurrent misses on one URL would be coalesced into one upstream request
    lb = start_powerlb([a, b], algorithm="least-connections", cache_size=0)
    in_flight = lambda: [x.in_flight for x in lb.service.backends]  # noqa: E731
    pending = [http.get(lb.url + "/hold") for _ in range(2)]
    await wait_for(lambda: len(held["a"]) + len(held["b"]) == 2)
    assert (len(held["a"]), len(held["b"])) == (1, 1)
    assert in_flight() == [1, 1]
    held["a"][0].finish()
    await wait_for(lambda: in_flight() == [0, 1])
    # a has nothing in flight, b one request: a takes every new request while b is busy.
    assert await backends_hit(http, lb.url, 3) == ["a", "a", "a"]
    held["b"][0].finish()
    for d in pending:
        await (await d).content()
    assert in_flight() == [0, 0]
    assert sorted(await backends_hit(http, lb.url, 2)) == ["a", "b"]


@pytest_twisted.ensureDeferred
async def test_connections_to_backends_are_reused(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start_powerlb([a])
    for _ in range(20):
        response = await http.get(lb.url + "/")
        assert response.code == 200
        await response.content()
    assert a.served() == 20
    assert a.connections_used() == 1
    assert all(r.header(b"connection") == [] for r in a.requests if r.uri != b"/health")


@pytest_twisted.ensureDeferred
async def test_forwarding_headers_both_ways(make_backends, start_powerlb, http):
    (a,) = make_backends(1)

    def respond(request: Any) -> bytes:
        request.responseHeaders.setRawHeaders(b"x-multi", [b"one", b"two"])
        request.responseHeaders.setRawHeaders(b"connection", [b"x-secret"])
        request.responseHeaders.setRawHeaders(b"x-secret", [b"hidden"])
        request.responseHeaders.setRawHeaders(b"keep-alive", [b"timeout=5"])
        return b"ok"

    a.routes[b"/h"] = respond
    lb = start_powerlb([a])
    response = await http.get(
        lb.url + "/h?q=1",
        headers={
            b"Host": [b"example.test"],
            b"X-Multi": [b"first", b"second"],
            b"Connection": [b"keep-alive, x-private"],
            b"X-Private": [b"drop me"],
            b"X-Forwarded-For": [b"203.0.113.9"],
            b"Proxy-Authorization": [b"Basic Zm9vOmJhcg=="],
            b"TE": [b"trailers"],
        },
    )
    assert await response.content() == b"ok"
    seen = a.requests[-1]
    assert seen.uri == b"/h?q=1"
    assert seen.header(b"host") == [b"example.test"]
    assert seen.header(b"x-multi") == [b"first", b"second"]
    assert seen.header(b"x-private") == []
    assert seen.header(b"proxy-authorization") == []
    assert seen.header(b"te") == []
    assert seen.header(b"x-forwarded-for") == [b"203.0.113.9, 127.0.0.1"]
    assert seen.header(b"x-forwarded-proto") == [b"http"]
    assert seen.header(b"x-forwarded-host") == [b"example.test"]
    assert seen.header(b"via") == [b"1.1 powerlb"]
    assert response.headers.getRawHeaders(b"x-multi") == [b"one", b"two"]
    assert response.headers.getRawHeaders(b"x-secret") is None
    assert response.headers.getRawHeaders(b"keep-alive") is None
    assert response.headers.getRawHeaders(b"via") == [b"1.1 powerlb"]


@pytest_twisted.ensureDeferred
async def test_request_body_and_status_pass_through(make_backends, start_powerlb, http):
    (a,) = make_backends(1)

    def created(request: Any) -> bytes:
        request.setResponseCode(201, b"Made It")
        return b"got " + request.content.read()

    a.routes[b"/items"] = created
    lb = start_powerlb([a])
    response = await http.post(lb.url + "/items", data=b"x" * 5000)
    assert response.code == 201
    assert response.phrase == b"Made It"
    assert await response.content() == b"got " + b"x" * 5000
    assert a.requests[-1].method == b"POST"
    assert a.requests[-1].header(b"content-length") == [b"5000"]
    assert response.headers.getRawHeaders(b"x-cache") == [b"BYPASS"]


@pytest_twisted.ensureDeferred
async def test_chunked_head_204_and_304_responses(make_backends, start_powerlb, http):
    (a,) = make_backends(1)

    def chunked(request: Any) -> Any:
        # No Content-Length: twisted.web sends this chunked; powerlb must decode and re-frame it.
        for i in range(50):
            request.write(b"piece-%d;" % i)
        request.finish()
        return NOT_DONE_YET

    def no_content(request: Any) -> bytes:
        request.setResponseCode(204)
        return b""

    def not_modified(request: Any) -> bytes:
        request.setResponseCode(304)
        request.setHeader(b"etag", b'"v1"')
        return b""

    a.routes.update({b"/chunked": chunked, b"/204": no_content, b"/304": not_modified})
    lb = start_powerlb([a])
    body = await (await http.get(lb.url + "/chunked")).content()
    assert body == b"".join(b"piece-%d;" % i for i in range(50))
    head = await http.head(lb.url + "/chunked")
    assert head.code == 200
    assert await head.content() == b""
    response = await http.get(lb.url + "/204")
    assert response.code == 204 and await response.content() == b""
    response = await http.get(lb.url + "/304", headers={b"If-None-Match": [b'"v1"']})
    assert response.code == 304 and await response.content() == b""
    assert response.headers.getRawHeaders(b"etag") == [b'"v1"']
    # The connection is still in sync after the bodiless responses.
    assert (await (await http.get(lb.url + "/")).json())["backend"] == "a"
    assert a.connections_used() == 1


@pytest_twisted.ensureDeferred
async def test_connect_failure_is_retried_on_another_backend(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start_powerlb([a, b], algorithm="round-robin")
    await a.stop()
    for _ in range(4):
        response = await http.get(lb.url + "/")
        assert response.code == 200
        assert (await response.json())["backend"] == "b"
    dead = next(x for x in lb.service.backends if x.url == a.url)
    assert dead.failures >= 1
    assert dead.in_flight == 0


@pytest_twisted.ensureDeferred
async def test_post_is_not_retried_and_gets_502(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start_powerlb([a, b], algorithm="round-robin")
    await a.stop()
    response = await http.post(lb.url + "/", data=b"payload")
    assert response.code == 502
    body = await response.text()
    assert body.startswith("502 Bad Gateway: cannot connect to backend")
    assert "Traceback" not in body
    assert b.served() == 0


@pytest_twisted.ensureDeferred
async def test_all_backends_down_gives_502_after_retry(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    lb = start_powerlb([a, b])
    await a.stop()
    await b.stop()
    response = await http.get(lb.url + "/")
    assert response.code == 502
    assert response.headers.getRawHeaders(b"content-type") == [b"text/plain; charset=utf-8"]


@pytest_twisted.ensureDeferred
async def test_backend_that_does_not_answer_gives_504(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    a.routes[b"/hang"] = lambda request: NOT_DONE_YET
    lb = start_powerlb([a], response_timeout=0.3)
    response = await http.get(lb.url + "/hang")
    assert response.code == 504
    assert (await response.text()).startswith("504 Gateway Timeout: backend did not answer in time")
    assert lb.service.backends[0].in_flight == 0


@pytest_twisted.ensureDeferred
async def test_no_healthy_backend_gives_503(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    lb = start_powerlb([a])
    lb.service.backends[0].healthy = False
    response = await http.get(lb.url + "/")
    assert response.code == 503
    assert await response.text() == "503 Service Unavailable: no healthy backend\n"
    assert a.served() == 0


@pytest_twisted.ensureDeferred
async def test_health_checks_take_a_backend_out_and_bring_it_back(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    status = {"code": 200}

    def health(request: Any) -> bytes:
        request.setResponseCode(status["code"])
        return b"health"

    a.routes[b"/health"] = health
    lb = start_powerlb(
        [a, b], health_path="/health", health_interval=0.05, health_timeout=0.5, health_fall=3, health_rise=2
    )
    backend_a = lb.service.backends[0]
    status["code"] = 500
    for _ in range(200):
        if not backend_a.healthy:
            break
        await sleep(0.02)
    assert not backend_a.healthy
    assert await backends_hit(http, lb.url, 4) == ["b"] * 4
    status["code"] = 200
    for _ in range(200):
        if backend_a.healthy:
            break
        await sleep(0.02)
    assert backend_a.healthy
    assert sorted(await backends_hit(http, lb.url, 4)) == ["a", "a", "b", "b"]


class _SlowReader(protocol.Protocol):
    """A client that sends one request and then stops reading."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.received = 0
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)
        self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)

    def connectionLost(self, reason: Any) -> None:
        self.lost.callback(None)


@pytest_twisted.ensureDeferred
async def test_slow_client_pauses_the_backend_read(make_backends, start_powerlb):
    (a,) = make_backends(1)
    total = 64 * 1024 * 1024
    piece = b"z" * 65536
    state = {"sent": 0, "paused": 0}

    class Pump:
        def __init__(self, request: Any) -> None:
            self.request = request
            self.running = True

        def pauseProducing(self) -> None:
            state["paused"] += 1
            self.running = False

        def resumeProducing(self) -> None:
            self.running = True
            while self.running and state["sent"] < total:
                self.request.write(piece)
                state["sent"] += len(piece)
            if state["sent"] >= total:
                self.request.unregisterProducer()
                self.request.finish()

        def stopProducing(self) -> None:
            self.running = False

    def big(request: Any) -> Any:
        request.setHeader(b"content-length", b"%d" % total)
        pump = Pump(request)
        request.registerProducer(pump, True)
        reactor.callLater(0, pump.resumeProducing)
        return NOT_DONE_YET

    a.routes[b"/big"] = big
    lb = start_powerlb([a])
    client = _SlowReader(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", lb.port)
    await sleep(1.0)
    # The backend was told to pause and has sent only what socket buffers hold, not 64 MiB.
    assert state["paused"] >= 1
    assert state["sent"] < 16 * 1024 * 1024
    sent_while_paused = state["sent"]
    await sleep(0.3)
    assert state["sent"] == sent_while_paused
    client.transport.abortConnection()
    await client.lost


@pytest_twisted.ensureDeferred
async def test_client_disconnect_aborts_the_upstream_request(make_backends, start_powerlb):
    (a,) = make_backends(1)
    upstream_gone: defer.Deferred = defer.Deferred()

    def hang(request: Any) -> Any:
        request.notifyFinish().addErrback(lambda _: upstream_gone.callback(None))
        return NOT_DONE_YET

    a.routes[b"/hang"] = hang
    lb = start_powerlb([a])
    client = _SlowReader(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", lb.port)
    while not a.served():  # not a.requests: the first health check may come first
        await sleep(0.01)
    assert lb.service.backends[0].in_flight == 1
    client.transport.loseConnection()
    await upstream_gone
    assert lb.service.backends[0].in_flight == 0


@pytest_twisted.ensureDeferred
async def test_http11_request_without_host_gets_400(make_backends, start_powerlb):
    (a,) = make_backends(1)
    lb = start_powerlb([a])
    client = _SlowReader(b"GET / HTTP/1.1\r\n\r\n")
    client.connectionMade = lambda: client.transport.write(client.request)  # type: ignore[method-assign]
    received: List[bytes] = []
    client.dataReceived = received.append  # type: ignore[method-assign]
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", lb.port)
    while not received:
        await sleep(0.01)
    assert received[0].startswith(b"HTTP/1.1 400 ")
    assert b"without a Host header" in b"".join(received)
    client.transport.loseConnection()
    await client.lost
    assert a.served() == 0


@pytest_twisted.ensureDeferred
async def test_stats_endpoint_reports_backends_and_cache(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    a.routes[b"/c"] = b.routes[b"/c"] = _cacheable(b"cached body", max_age=60)
    lb = start_powerlb([a, b], admin="tcp:0:interface=127.0.0.1")
    for _ in range(3):
        await (await http.get(lb.url + "/c")).content()
    await (await http.get(lb.url + "/")).content()
    stats = await (await http.get(lb.admin_url + "/api/v1/stats")).json()
    assert [x["url"] for x in stats["backends"]] == [a.url, b.url]
    assert sum(x["requests"] for x in stats["backends"]) == 2
    assert all(x["healthy"] and x["in_flight"] == 0 and x["failures"] == 0 for x in stats["backends"])
    cache = stats["cache"]
    assert (cache["hits"], cache["misses"], cache["stores"], cache["entries"]) == (2, 2, 1, 1)
    assert cache["hit_ratio"] == 0.5
    assert cache["bytes"] > len(b"cached body")
    metrics = await (await http.get(lb.admin_url + "/metrics")).text()
    assert 'powerlb_cache_results_total{result="hits"} 2.0' in metrics
    assert 'powerlb_requests_total{backend="",cache="hit",code="2xx"} 2.0' in metrics
    # The admin listener is separate: the proxy port does not serve it.
    proxied = await http.get(lb.url + "/api/v1/stats")
    assert (await proxied.json())["backend"] in ("a", "b")


def _cacheable(body: bytes, max_age: int = 60, **headers: bytes) -> Any:
    def respond(request: Any) -> bytes:
        request.setHeader(b"cache-control", b"max-age=%d" % max_age)
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-").encode(), value)
        return body + b" from " + request.getHeader(b"x-forwarded-host")

    return respond


@pytest_twisted.ensureDeferred
async def test_cache_hit_skips_the_backend_and_sets_age(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    a.routes[b"/c"] = _cacheable(b"payload")
    lb = start_powerlb([a])
    first = await fetch(http, lb.url + "/c")
    assert first.x_cache == b"MISS"
    second = await fetch(http, lb.url + "/c")
    assert second.x_cache == b"HIT"
    assert second.body == first.body
    assert second.headers.getRawHeaders(b"age") == [b"0"]
    assert second.headers.getRawHeaders(b"cache-control") == [b"max-age=60"]
    assert second.headers.getRawHeaders(b"date") == first.headers.getRawHeaders(b"date")
    head = await http.head(lb.url + "/c")
    assert head.headers.getRawHeaders(b"x-cache") == [b"HIT"]
    assert head.headers.getRawHeaders(b"content-length") == [b"%d" % len(first.body)]
    assert await head.content() == b""
    assert a.served() == 1
    # A different query string is a different object.
    assert (await fetch(http, lb.url + "/c?v=2")).x_cache == b"MISS"


@pytest_twisted.ensureDeferred
async def test_cached_response_expires(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    a.routes[b"/c"] = _cacheable(b"short", max_age=1)
    lb = start_powerlb([a])
    assert (await fetch(http, lb.url + "/c")).x_cache == b"MISS"
    hit = await fetch(http, lb.url + "/c")
    assert hit.x_cache == b"HIT"
    await sleep(1.1)
    assert (await fetch(http, lb.url + "/c")).x_cache == b"MISS"
    assert a.served() == 2


@pytest_twisted.ensureDeferred
async def test_upstream_age_is_counted(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    a.routes[b"/c"] = _cacheable(b"aged", max_age=100, age=b"40")
    lb = start_powerlb([a])
    await fetch(http, lb.url + "/c")
    hit = await fetch(http, lb.url + "/c")
    assert hit.x_cache == b"HIT"
    assert int(hit.headers.getRawHeaders(b"age")[0]) >= 40


@pytest_twisted.ensureDeferred
async def test_responses_the_cache_must_not_store(make_backends, start_powerlb, http):
    (a,) = make_backends(1)

    def with_headers(**headers: bytes) -> Any:
        def respond(request: Any) -> bytes:
            for name, value in headers.items():
                request.setHeader(name.replace("_", "-").encode(), value)
            return b"body"

        return respond

    a.routes.update(
        {
            b"/no-store": with_headers(cache_control=b"no-store, max-age=60"),
            b"/private": with_headers(cache_control=b"private, max-age=60"),
            b"/cookie": with_headers(cache_control=b"max-age=60", set_cookie=b"id=1"),
            b"/vary-star": with_headers(cache_control=b"max-age=60", vary=b"*"),
            b"/no-freshness": with_headers(),
            b"/auth": with_headers(cache_control=b"max-age=60"),
            b"/auth-public": with_headers(cache_control=b"public, max-age=60"),
        }
    )
    lb = start_powerlb([a])
    for path in ("/no-store", "/private", "/cookie", "/vary-star", "/no-freshness"):
        for _ in range(2):
            assert (await fetch(http, lb.url + path)).x_cache == b"MISS", path
    auth = {b"Authorization": [b"Bearer t"]}
    for _ in range(2):
        assert (await fetch(http, lb.url + "/auth", headers=auth)).x_cache == b"MISS"
    await fetch(http, lb.url + "/auth-public", headers=auth)
    assert (await fetch(http, lb.url + "/auth-public", headers=auth)).x_cache == b"HIT"
    assert a.served() == 2 * 5 + 2 + 1
    # POST is never answered from the cache.
    post = await http.post(lb.url + "/auth-public", data=b"")
    assert post.headers.getRawHeaders(b"x-cache") == [b"BYPASS"]


@pytest_twisted.ensureDeferred
async def test_vary_keeps_one_variant_per_header_value(make_backends, start_powerlb, http):
    (a,) = make_backends(1)

    def negotiated(request: Any) -> bytes:
        request.setHeader(b"cache-control", b"max-age=60")
        request.setHeader(b"vary", b"Accept-Language")
        return b"hello in " + (request.getHeader(b"accept-language") or b"default")

    a.routes[b"/v"] = negotiated
    lb = start_powerlb([a])
    en = {b"Accept-Language": [b"en"]}
    fr = {b"Accept-Language": [b"fr"]}
    assert (await fetch(http, lb.url + "/v", headers=en)).x_cache == b"MISS"
    assert (await fetch(http, lb.url + "/v", headers=fr)).x_cache == b"MISS"
    hit_en = await fetch(http, lb.url + "/v", headers=en)
    hit_fr = await fetch(http, lb.url + "/v", headers=fr)
    assert (hit_en.x_cache, hit_en.body) == (b"HIT", b"hello in en")
    assert (hit_fr.x_cache, hit_fr.body) == (b"HIT", b"hello in fr")
    assert a.served() == 2


@pytest_twisted.ensureDeferred
async def test_objects_over_the_size_limit_are_served_whole_but_not_stored(
    make_backends, start_powerlb, http
):
    (a,) = make_backends(1)
    big = b"B" * 300_000

    def chunked_big(request: Any) -> Any:
        request.setHeader(b"cache-control", b"max-age=60")
        for i in range(0, len(big), 10_000):
            request.write(big[i : i + 10_000])
        request.finish()
        return NOT_DONE_YET

    a.routes[b"/big"] = lambda request: (request.setHeader(b"cache-control", b"max-age=60"), big)[1]
    a.routes[b"/chunked-big"] = chunked_big
    lb = start_powerlb([a], cache_max_object="100KiB")
    for path in ("/big", "/chunked-big"):
        for _ in range(2):
            response = await fetch(http, lb.url + path)
            assert (response.x_cache, response.body) == (b"MISS", big)
    assert a.served() == 4
    assert lb.service.cache.stats()["entries"] == 0


@pytest_twisted.ensureDeferred
async def test_cache_is_bounded_by_total_bytes_with_lru_eviction(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    a.routes[b"/obj"] = lambda request: (request.setHeader(b"cache-control", b"max-age=60"), b"o" * 40_000)[1]
    lb = start_powerlb([a], cache_size="100KiB", cache_max_object="64KiB")
    for i in range(5):
        await fetch(http, lb.url + f"/obj?{i}")
    stats = lb.service.cache.stats()
    assert stats["bytes"] <= 100 * 1024
    assert stats["entries"] == 2
    assert stats["evictions"] == 3
    assert (await fetch(http, lb.url + "/obj?4")).x_cache == b"HIT"
    assert (await fetch(http, lb.url + "/obj?0")).x_cache == b"MISS"


@pytest_twisted.ensureDeferred
async def test_cache_disabled_with_size_zero(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    a.routes[b"/c"] = _cacheable(b"x")
    lb = start_powerlb([a], cache_size=0)
    for _ in range(2):
        assert (await fetch(http, lb.url + "/c")).x_cache == b"BYPASS"
    assert a.served() == 2


@pytest_twisted.ensureDeferred
async def test_killed_backend_is_avoided_and_taken_back(make_backends, start_powerlb, http):
    a, b, c = make_backends(3)
    lb = start_powerlb([a, b, c], health_interval=0.05, health_timeout=0.3, health_fall=2, health_rise=2)
    port_b = b.port_number
    seen: List[str] = []
    failures = 0
    for i in range(300):
        if i == 50:
            await b.stop()
        if i == 150:
            b.start(port_b)
        response = await http.get(lb.url + "/")
        if response.code != 200:
            failures += 1
            await response.content()
        else:
            seen.append((await response.json())["backend"])
        await sleep(0.005)
    assert failures == 0
    assert "b" in seen[:50]
    assert "b" in seen[-50:]
    assert lb.service.backends[1].healthy
