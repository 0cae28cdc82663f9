"""A reload that changes routes and pools under load fails no request (issue 12): a bounded
client loop runs through powerlb while the service reloads a pool in, a route over to it, the
old pool out and another pool in; every request succeeds and each follows the routes in use
when it was sent, or newer ones. SIGHUP under twistd:
tests/process/test_lifecycle.py::test_sighup_reloads_routes_and_pools."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest_twisted
from twisted.internet import defer

from powerlb.config import config_from_mapping
from tests.support.inproc import fetch

#: Requests in all, the clients sending them at once, and how many answers come between reloads.
REQUESTS = 300
CLIENTS = 6
EVERY = 50
PATHS = ("/api/x", "/web/x")


def steps(a: Any, b: Any, c: Any) -> List[Tuple[Dict[str, Any], List[Dict[str, Any]], Dict[str, str]]]:
    """Each configuration in turn: its pools, its routes and the backend each path goes to."""
    return [
        (
            {"old": {"backends": [a.url]}},
            [{"path-prefix": "/api/", "pool": "old"}, {"pool": "old"}],
            {"/api/x": "a", "/web/x": "a"},
        ),
        (  # a pool added
            {"old": {"backends": [a.url]}, "new": {"backends": [c.url]}},
            [{"path-prefix": "/api/", "pool": "old"}, {"pool": "old"}],
            {"/api/x": "a", "/web/x": "a"},
        ),
        (  # a route moved to it
            {"old": {"backends": [a.url]}, "new": {"backends": [c.url]}},
            [{"path-prefix": "/api/", "pool": "new"}, {"pool": "old"}],
            {"/api/x": "c", "/web/x": "a"},
        ),
        (  # the old pool removed
            {"new": {"backends": [c.url]}},
            [{"path-prefix": "/api/", "pool": "new"}, {"pool": "new"}],
            {"/api/x": "c", "/web/x": "c"},
        ),
        (  # another pool added, the catch-all moved to it
            {"new": {"backends": [c.url]}, "web": {"backends": [b.url]}},
            [{"path-prefix": "/api/", "pool": "new"}, {"pool": "web"}],
            {"/api/x": "c", "/web/x": "b"},
        ),
    ]


def mapping(pools: Dict[str, Any], routes: List[Dict[str, Any]]) -> Dict[str, Any]:
    return {
        "listen": "tcp:0:interface=127.0.0.1",
        "health-interval": 60,
        "cache-size": 0,
        "pools": pools,
        "routes": routes,
    }


@pytest_twisted.ensureDeferred
async def test_reloading_routes_and_pools_under_load_fails_no_request(make_backends, start_powerlb, http):
    a, b, c = make_backends(3)
    for backend in (a, b, c):
        for path in PATHS:  # answers that take a moment, so reloads find requests in flight
            backend.answer(path.encode(), body=backend.name.encode(), delay=0.005)
    configs = steps(a, b, c)
    pools, routes, _ = configs[0]
    lb = start_powerlb([a], **{k: v for k, v in mapping(pools, routes).items() if k != "listen"})
    step = 0
    done: List[Tuple[int, str, int, str]] = []  # (step when sent, path, status, backend)
    in_flight_at_reload: List[int] = []
    sent = 0

    async def client() -> None:
        nonlocal sent, step
        while sent < REQUESTS:
            path, when = PATHS[sent % 2], step
            sent += 1
            response = await fetch(http, lb.url + path)
            done.append((when, path, response.code, response.backend))
            if len(done) % EVERY == 0 and step + 1 < len(configs):
                in_flight_at_reload.append(sent - len(done))
                step += 1
                lb.service.reload(config_from_mapping(mapping(*configs[step][:2])))

    await defer.gatherResults([defer.ensureDeferred(client()) for _ in range(CLIENTS)])

    assert len(done) == REQUESTS
    assert [(status, backend) for _, _, status, backend in done if status != 200] == []
    assert step == len(configs) - 1 and set(lb.service.pools) == {"new", "web"}
    assert sum(in_flight_at_reload) > 0, in_flight_at_reload  # some reloads found requests in flight
    for when, path, _, backend in done:
        # planned under the routes in use when it was sent, or under a reload that came after
        assert backend in {configs[later][2][path] for later in range(when, len(configs))}, (when, path)
    last = [(path, backend) for when, path, _, backend in done if when == len(configs) - 1]
    assert {path for path, _ in last} == set(PATHS)
    assert all(backend == configs[-1][2][path] for path, backend in last)
    assert len(a.requests) < REQUESTS and len(b.requests) > 0
