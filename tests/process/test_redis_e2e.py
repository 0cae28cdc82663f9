"""Two powerlb instances sharing a real redis-server (tests/support/redis.py): the shared second
cache tier, purges and admin changes applied cluster-wide, and Redis going away and coming back
while both keep serving."""

from __future__ import annotations

import json
from typing import Any, List, Tuple

import pytest_twisted
from twisted.internet import threads

from powerlb.redistier import TIMEOUTS_TO_RECONNECT
from tests.support.caching import CACHEABLE
from tests.support.inproc import Running, wait_for
from tests.support.redis import RedisServer

TOKEN = "cluster-token"
HOST = {"Host": ["www.example"]}  # the same cache key through either instance


def pair(start_powerlb: Any, backends: List[Any], redis: RedisServer) -> Tuple[Running, Running]:
    return tuple(  # type: ignore[return-value]
        start_powerlb(backends, redis=redis.url, admin="tcp:0:interface=127.0.0.1", admin_token=TOKEN)
        for _ in range(2)
    )


def joined(*nodes: Running) -> bool:
    """Every node is connected to Redis and subscribed to the change bus."""
    return all(node.service.bus.stats()["up"] and node.service.bus.subscribed for node in nodes)


def fetches(backend: Any, path: bytes) -> int:
    return sum(1 for request in backend.requests if request.uri == path)


async def get(http: Any, node: Running, path: str) -> Tuple[int, bytes, str]:
    response = await http.get(node.url + path, headers=HOST)
    body = await response.content()
    return response.code, body, response.headers.getRawHeaders("x-cache", [""])[0]


async def change(http: Any, node: Running, method: str, path: str, body: Any) -> Any:
    response = await http.request(
        method,
        f"{node.admin_url}/api/v1/{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": [f"Bearer {TOKEN}"], "Content-Type": ["application/json"]},
    )
    answer = json.loads(await response.content())
    assert response.code == 200, answer
    return answer


@pytest_twisted.ensureDeferred
async def test_a_fill_through_one_instance_is_a_hit_through_the_other(
    make_backends: Any,
    start_powerlb: Any,
    http: Any,
    redis_server: RedisServer,
) -> None:
    [backend] = make_backends(1)
    backend.answer(b"/page", body=b"shared", headers=CACHEABLE)
    a, b = pair(start_powerlb, [backend], redis_server)
    await wait_for(lambda: joined(a, b))

    assert await get(http, a, "/page") == (200, b"shared", "MISS")
    await wait_for(lambda: a.service.redis.figures["stores"] == 1)
    assert await get(http, b, "/page") == (200, b"shared", "HIT")
    assert fetches(backend, b"/page") == 1
    assert b.service.stats()["redis"]["hits"] == 1
    metrics = await (await http.get(b.admin_url + "/metrics")).text()
    assert "powerlb_redis_hits_total 1.0" in metrics and "powerlb_redis_up 1.0" in metrics


@pytest_twisted.ensureDeferred
async def test_a_purge_through_one_api_removes_the_entry_everywhere(
    make_backends: Any,
    start_powerlb: Any,
    http: Any,
    redis_server: RedisServer,
) -> None:
    [backend] = make_backends(1)
    backend.answer(b"/page", body=b"shared", headers=CACHEABLE)
    a, b = pair(start_powerlb, [backend], redis_server)
    await wait_for(lambda: joined(a, b))
    await get(http, a, "/page")
    await wait_for(lambda: a.service.redis.figures["stores"] == 1)
    assert (await get(http, b, "/page"))[2] == "HIT"  # now in both instances' own tiers

    assert (await change(http, b, "POST", "cache/purge", {"url": "http://www.example/page"}))["purged"] == 1
    await wait_for(lambda: a.service.cache.keys() == [])
    assert (await get(http, a, "/page"))[2] == "MISS"  # not refilled from Redis either
    assert fetches(backend, b"/page") == 2


@pytest_twisted.ensureDeferred
async def test_a_purge_request_to_one_instance_purges_the_other(
    make_backends: Any,
    start_powerlb: Any,
    http: Any,
    redis_server: RedisServer,
) -> None:
    [backend] = make_backends(1)
    backend.answer(b"/page", body=b"shared", headers=CACHEABLE)
    a, b = (start_powerlb([backend], redis=redis_server.url, purge_allow="127.0.0.1") for _ in range(2))
    await wait_for(lambda: joined(a, b))
    await get(http, b, "/page")
    await wait_for(lambda: b.service.redis.figures["stores"] == 1)

    response = await http.request("PURGE", a.url + "/page", headers=HOST)
    assert response.code == 404  # nothing stored in A itself
    await wait_for(lambda: b.service.cache.keys() == [])
    assert (await get(http, a, "/page"))[2] == "MISS"  # and nothing left in Redis


@pytest_twisted.ensureDeferred
async def test_a_drain_through_one_api_applies_on_the_other(
    make_backends: Any,
    start_powerlb: Any,
    http: Any,
    redis_server: RedisServer,
) -> None:
    backends = make_backends(2)
    a, b = pair(start_powerlb, backends, redis_server)
    await wait_for(lambda: joined(a, b))
    drained = backends[0].url.split("//", 1)[1]

    await change(http, a, "PATCH", f"backends/{drained}", {"state": "draining"})
    await wait_for(lambda: [x.state for x in b.service.backends] == ["draining", "enabled"])
    assert b.service.bus.received == 1 and a.service.bus.received == 0


@pytest_twisted.ensureDeferred
async def test_redis_going_away_fails_no_request_and_both_resync_when_it_returns(
    make_backends: Any,
    start_powerlb: Any,
    http: Any,
    redis_server: RedisServer,
) -> None:
    [backend] = make_backends(1)
    backend.answer(b"/page", body=b"shared", headers=CACHEABLE)
    a, b = pair(start_powerlb, [backend], redis_server)
    await wait_for(lambda: joined(a, b))
    statuses = []

    async def traffic(rounds: int) -> None:
        for n in range(rounds):
            for node in (a, b):
                statuses.append((await get(http, node, "/page"))[0])
                statuses.append((await get(http, node, f"/fresh-{n}"))[0])  # misses: Redis lookups

    await traffic(3)
    await threads.deferToThread(redis_server.stop)
    await wait_for(lambda: not a.service.redis.up and not b.service.redis.up)
    await traffic(5)
    await threads.deferToThread(redis_server.start)
    await wait_for(lambda: joined(a, b), timeout=20)
    await traffic(3)

    assert statuses == [200] * len(statuses)
    for node in (a, b):
        figures = node.service.stats()["redis"]
        assert figures["reconnects"] >= 1 and figures["errors"] >= 1 and figures["up"]
    # resynced: a purge made through A after Redis came back applies on B
    await get(http, b, "/page")
    assert b.service.cache.keys() != []
    await change(http, a, "POST", "cache/purge", {"prefix": "http://www.example/"})
    await wait_for(lambda: b.service.cache.keys() == [])


@pytest_twisted.ensureDeferred
async def test_a_hung_redis_costs_timeouts_not_failures_and_is_left_until_it_answers(
    make_backends: Any,
    start_powerlb: Any,
    http: Any,
    redis_server: RedisServer,
) -> None:
    [backend] = make_backends(1)
    a = start_powerlb([backend], redis=redis_server.url, redis_timeout="20ms")
    await wait_for(lambda: joined(a))
    redis_server.pause()
    try:
        statuses = [(await get(http, a, f"/hung-{n}"))[0] for n in range(TIMEOUTS_TO_RECONNECT + 3)]
        assert statuses == [200] * len(statuses)
        figures = a.service.stats()["redis"]
        assert figures["timeouts"] >= TIMEOUTS_TO_RECONNECT and not figures["up"]  # dropped, retried
    finally:
        redis_server.resume()
    await wait_for(lambda: joined(a), timeout=20)
    assert a.service.stats()["redis"]["reconnects"] == 1


@pytest_twisted.ensureDeferred
async def test_the_store_keeps_variants_and_purges_by_url_and_by_prefix(
    redis_server: RedisServer,
) -> None:
    from twisted.internet import reactor

    from powerlb.cache import CachedResponse
    from powerlb.redistier import RedisStore
    from powerlb.values import redis_address

    store = RedisStore(redis_address(redis_server.url), b"t:", 1.0, reactor)
    store.startService()
    try:
        await wait_for(lambda: store.up)

        def entry(body: bytes, language: bytes) -> CachedResponse:
            now = reactor.seconds()
            return CachedResponse(200, b"OK", [], body, now, 0.0, 60.0, (b"accept-language",), (language,))

        assert await store.put(b"http://h/a*", entry(b"en", b"en"), 60_000)
        assert await store.put(b"http://h/a*", entry(b"fr", b"fr"), 60_000)
        assert await store.put(b"http://h/b", entry(b"b", b"en"), 60_000)
        assert sorted(e.body for e in await store.get(b"http://h/a*")) == [b"en", b"fr"]
        await store.purge(b"http://h/a", prefix=True)  # the * is a character, not a pattern
        assert [e.body for e in await store.get(b"http://h/a*")] == []
        assert [e.body for e in await store.get(b"http://h/b")] == [b"b"]
        await store.purge(b"http://h/b", prefix=False)
        assert await store.get(b"http://h/b") == []
        assert store.stats()["errors"] == 0 and store.stats()["purges"] == 2
    finally:
        store.stopService()
