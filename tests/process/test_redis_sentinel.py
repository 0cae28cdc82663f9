"""``redis-sentinel``: powerlb asks a real Sentinel (``redis-server --sentinel``) where the master
is and follows a failover to the replica, both for the cache tier and for the change bus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import threads

from tests.support import HOST
from tests.support.caching import CACHEABLE
from tests.support.inproc import wait_for
from tests.support.redis import RedisServer, Sentinel


def peer(link: Any) -> int:
    """The port a Redis link is connected to now (0 when it is not)."""
    return 0 if link is None or link.connection is None else link.connection.transport.getPeer().port


@pytest_twisted.ensureDeferred
async def test_the_tier_and_the_bus_follow_a_failover(
    tmp_path: Path, make_backends: Any, start_powerlb: Any, http: Any, redis_server: RedisServer
) -> None:
    replica = RedisServer(tmp_path, "--replicaof", HOST, str(redis_server.port))
    sentinel = Sentinel(tmp_path, redis_server, "shop")
    try:
        await threads.deferToThread(replica.start)
        await threads.deferToThread(sentinel.start)
        [backend] = make_backends(1)
        for path in (b"/before", b"/after"):
            backend.answer(path, body=path, headers=CACHEABLE)
        node = start_powerlb(
            [backend],
            redis=f"redis://{HOST}:1/0",  # with Sentinels only its database counts
            redis_sentinel=f"{HOST}:{sentinel.port}",
            redis_sentinel_master="shop",
        )
        store, bus = node.service.redis, node.service.bus
        await wait_for(lambda: store.up and bus.subscribed)
        assert (peer(store.link), peer(bus.link)) == (redis_server.port, redis_server.port)
        await http.get(node.url + "/before")
        await wait_for(lambda: store.figures["stores"] == 1)

        await threads.deferToThread(sentinel.fail_over, replica)
        await wait_for(lambda: (peer(store.link), peer(bus.link)) == (replica.port, replica.port), timeout=30)
        await wait_for(lambda: bus.subscribed)
        response = await http.get(node.url + "/after")
        assert response.code == 200
        await wait_for(lambda: store.figures["stores"] == 2)  # written to the new master
        assert store.stats()["reconnects"] >= 1
    finally:
        await threads.deferToThread(sentinel.stop)
        await threads.deferToThread(replica.stop)
