"""Instances acting as one through a real redis-server (tests/support/redis.py): an instance
with ``--workers 2`` and a single-process one share their runtime API changes and purges (real
twistd processes in front of demo backends), and an unsafe request through one instance drops
the entry from the other's cache and from Redis (two in-process instances)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest_twisted

from tests.support import HOST, Process, get, request, start_twistd_powerlb, stats, wait_until
from tests.support.caching import CACHEABLE
from tests.support.inproc import wait_for
from tests.support.redis import RedisServer

TOKEN = "cluster-token"


def patch(admin: int, backend: int, state: str) -> Dict[str, Any]:
    """Set the state of the backend on ``backend`` (its port) through the runtime API on ``admin``."""
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    body = json.dumps({"state": state}).encode()
    answer = request(admin, "PATCH", f"/api/v1/backends/{HOST}:{backend}", body, headers, timeout=30)
    assert answer.status == 200, answer.body
    return answer.json()


def joined(admin: int, workers: int = 0) -> bool:
    """The instance on ``admin`` is connected to Redis and subscribed (with its ``workers`` reporting)."""
    figures = stats(admin)
    redis = figures.get("redis", {})
    return bool(redis.get("up") and redis.get("subscribed")) and len(figures.get("workers", [])) == workers


def served_by(listen: int, count: int = 20) -> Set[str]:
    """The demo backends (their ports) that answered ``count`` GETs, each on a fresh connection
    (so spread over the workers)."""
    return {get(listen, f"/where/{n}").headers["x-backend"] for n in range(count)}


def received(admin: int) -> int:
    return stats(admin)["redis"]["received"]


def test_changes_cross_between_an_instance_with_workers_and_one_without(
    tmp_path: Path, demo_backends: Any, redis_server: RedisServer
) -> None:
    first, second = demo_backends(2)
    common = ("--admin-token", TOKEN, "--redis", redis_server.url, "--purge-allow", "127.0.0.1/32")
    started: List[Process] = []
    try:
        for name in ("a", "b"):
            (tmp_path / name).mkdir()
        a, (a_listen, a_admin) = start_twistd_powerlb(
            tmp_path / "a", [first, second], "--workers", "2", *common
        )
        started.append(a)
        b, (b_listen, b_admin) = start_twistd_powerlb(tmp_path / "b", [first, second], *common)
        started.append(b)
        wait_until(lambda: joined(a_admin, workers=2) and joined(b_admin), "both instances on the bus")

        # a drain through A's API (the supervisor) applies on both workers and on B
        assert len(patch(a_admin, first, "draining")["workers"]) == 2
        wait_until(lambda: served_by(b_listen) == {str(second)}, "B drained the first backend")
        assert served_by(a_listen) == {str(second)}
        assert (received(a_admin), received(b_admin)) == (0, 1)

        # changes through B's API reach both of A's workers: each serves from the first backend only
        patch(b_admin, first, "enabled")
        patch(b_admin, second, "draining")
        wait_until(lambda: received(a_admin) == 2, "A received B's two changes")
        assert served_by(a_listen, 30) == {str(first)}
        assert received(b_admin) == 1  # A relayed them to its workers without publishing them again

        # a PURGE one of A's workers serves reaches B (the supervisor publishes what workers forward)
        cached = {"Host": "www.example"}
        wait_until(
            lambda: request(b_listen, "GET", "/cached", headers=cached).headers["x-cache"] == "HIT", "B"
        )
        assert request(a_listen, "PURGE", "/cached", headers=cached).status in (200, 404)
        wait_until(lambda: stats(b_admin)["cache"]["entries"] == 0, "the PURGE through A applied on B")
        assert received(b_admin) == 2
    finally:
        for process in started:
            status = process.stop()
            assert status in (0, -signal.SIGTERM), process.describe()
            assert "Traceback" not in process.output(), process.describe()


@pytest_twisted.ensureDeferred
async def test_a_post_through_one_instance_drops_the_entry_everywhere(
    make_backends: Any, start_powerlb: Any, http: Any, redis_server: RedisServer
) -> None:
    [backend] = make_backends(1)
    backend.answer(b"/page", body=b"shared", headers=CACHEABLE)
    a, b = (start_powerlb([backend], redis=redis_server.url) for _ in range(2))
    await wait_for(lambda: all(node.service.bus.subscribed and node.service.redis.up for node in (a, b)))
    host = {"Host": ["www.example"]}  # the same cache key through either instance

    async def cache_result(node: Any, method: str = "GET") -> str:
        response = await http.request(method, node.url + "/page", headers=host)
        await response.content()
        assert response.code == 200
        return response.headers.getRawHeaders("x-cache", [""])[0]

    assert await cache_result(a) == "MISS"
    await wait_for(lambda: a.service.redis.figures["stores"] == 1)
    assert await cache_result(b) == "HIT"  # from Redis: now in both instances' own tiers

    await cache_result(b, "POST")
    await wait_for(lambda: a.service.cache.keys() == [])
    assert b.service.cache.keys() == [] and b.service.bus.received == 0
    assert await cache_result(a) == "MISS"  # not refilled from Redis either
    assert [request.method for request in backend.requests if request.uri == b"/page"] == [
        b"GET",
        b"POST",
        b"GET",
    ]
