"""Pools at run time and the Router (issue 12): planning on a MemoryReactorClock, the pools'
own algorithms and health checks, the runtime API's pools, the stats and reload."""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest
import pytest_twisted
from twisted.internet.testing import MemoryReactorClock

from powerlb.balancing import make_balancer
from powerlb.config import config_from_mapping
from powerlb.plan import RequestPlan
from powerlb.policies import Refusal
from powerlb.routing import NO_ROUTE_REASON
from powerlb.service import PowerLBService
from tests.support.inproc import ADMIN, TOKEN, backends_hit, fetch, scrape, wait_for

#: The example of issue 12 (and the README).
POOLS = {
    "web": {"backends": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"], "algorithm": "round-robin"},
    "api": {
        "backends": ["http://127.0.0.1:9101"],
        "algorithm": "least-connections",
        "health-path": "/healthz",
    },
}
ROUTES = [
    {"host": "api.example.com", "pool": "api"},
    {"path-prefix": "/static/", "pool": "web", "cache": "on"},
    {"pool": "web"},
]


def service(pools: Any = None, routes: Any = None, **settings: Any) -> PowerLBService:
    """A powerlb (not started) of ``pools`` and ``routes`` on a MemoryReactorClock."""
    mapping: Dict[str, Any] = {"listen": "tcp:0", "pools": pools or POOLS, "routes": routes or ROUTES}
    mapping.update({k.replace("_", "-"): v for k, v in settings.items()})
    return PowerLBService(config_from_mapping(mapping), MemoryReactorClock())


def plan(
    lb: PowerLBService,
    target: bytes = b"/",
    host: Optional[bytes] = b"www.example.com",
    headers: Optional[List[Any]] = None,
    peer: str = "192.0.2.1",
    method: bytes = b"GET",
) -> Any:
    return lb.planner.plan(method, b"http", host, target, headers or [], peer)


# --- the Router ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "target", "pool", "route"),
    [
        (b"api.example.com", b"/anything", "api", 0),
        (b"API.example.com:8080", b"/static/x", "api", 0),
        (b"www.example.com", b"/static/app.js", "web", 1),
        (b"www.example.com", b"/", "web", 2),
        (None, b"/static", "web", 2),
    ],
)
def test_first_matching_route_gives_its_pool(
    host: Optional[bytes], target: bytes, pool: str, route: int
) -> None:
    lb = service()
    decided = plan(lb, target, host)
    assert isinstance(decided, RequestPlan)
    assert (decided.pool, decided.route.index) == (pool, route)
    assert decided.dispatcher is lb.pools[pool].dispatcher
    assert decided.request_id


def test_no_route_is_a_404_with_a_reason_and_counted() -> None:
    lb = service(routes=[{"host": "api.example.com", "pool": "api"}])
    decided = plan(lb, b"/", b"other.example.com")
    assert decided == Refusal("no-route", 404, NO_ROUTE_REASON, [])
    assert lb.stats()["routes"][-1] == {
        "route": "none",
        "pool": None,
        "match": "no route matched",
        "requests": 1,
        "refusals": {"no-route": 1},
    }


def test_the_request_id_is_kept_or_made() -> None:
    lb = service(request_id_header="X-Trace")
    assert plan(lb, headers=[(b"x-trace", b"abc")]).request_id == b"abc"
    made = plan(lb).request_id
    assert made and made != plan(lb).request_id


def test_acl_on_the_client_behind_trusted_proxies() -> None:
    routes = [{"path-prefix": "/admin/", "allow": "10.0.0.0/8", "pool": "web"}, {"pool": "web"}]
    lb = service(routes=routes, trusted_proxies="192.0.2.0/24")
    inside = [(b"x-forwarded-for", b"10.1.2.3")]
    assert isinstance(plan(lb, b"/admin/x", headers=inside), RequestPlan)
    assert plan(lb, b"/admin/x").status == 403  # the proxy itself is not in the list
    outside = [(b"x-forwarded-for", b"10.1.2.3, 203.0.113.9")]
    assert plan(lb, b"/admin/x", headers=outside).policy == "acl"
    untrusted = service(routes=routes)  # no trusted proxies: the header is not believed
    assert plan(untrusted, b"/admin/x", headers=inside).status == 403
    figures = {route["route"]: route for route in lb.stats()["routes"]}
    assert (figures["0"]["requests"], figures["0"]["refusals"]) == (3, {"acl": 2})


def test_rate_limit_per_route_on_the_reactor_clock() -> None:
    routes = [
        {"path-prefix": "/api/", "rate-limit": "1/s", "rate-limit-burst": 2, "pool": "api"},
        {"pool": "web"},
    ]
    lb = service(routes=routes)
    assert [isinstance(plan(lb, b"/api/x"), RequestPlan) for _ in range(3)] == [True, True, False]
    refused = plan(lb, b"/api/x")
    assert (refused.status, refused.headers) == (429, [(b"retry-after", b"1")])
    assert isinstance(plan(lb, b"/api/x", peer="192.0.2.2"), RequestPlan)  # per client
    assert isinstance(plan(lb, b"/other"), RequestPlan)  # per route
    lb.reactor.advance(1)
    assert isinstance(plan(lb, b"/api/x"), RequestPlan)
    assert lb.stats()["routes"][0]["refusals"] == {"rate-limit": 2}


def test_redirect_routes_answer_themselves() -> None:
    routes = [{"host": "old.example.com", "redirect": "https://new.example.com{path}"}, {"pool": "web"}]
    decided = plan(service(routes=routes), b"/a?b", b"old.example.com")
    assert (decided.policy, decided.status, decided.headers) == (
        "redirect",
        301,
        [(b"location", b"https://new.example.com/a")],
    )


# --- pools -----------------------------------------------------------------------------------------


def test_each_pool_has_its_own_settings_and_parts() -> None:
    lb = service()
    web, api = lb.pools["web"], lb.pools["api"]
    assert [b.url for b in web.backends] == POOLS["web"]["backends"]
    assert [b.url for b in api.backends] == POOLS["api"]["backends"]
    assert type(web.balancer) is type(make_balancer("round-robin", []))
    assert type(api.balancer) is type(make_balancer("least-connections", []))
    assert (web.config.health_path, api.config.health_path) == (None, "/healthz")
    assert web.dispatcher is not api.dispatcher and set(web.clients).isdisjoint(api.clients)
    assert lb.default_pool is web  # no pool named default: the first
    assert lb.dispatcher is web.dispatcher and lb.backends is web.backends
    stats = lb.stats()
    assert [(b["pool"], b["url"]) for b in stats["backends"]] == [
        ("web", "http://127.0.0.1:9001"),
        ("web", "http://127.0.0.1:9002"),
        ("api", "http://127.0.0.1:9101"),
    ]
    assert stats["pools"] == [
        {"name": "web", "algorithm": "round-robin", "backends": 2, "healthy": 2, "default": True},
        {"name": "api", "algorithm": "least-connections", "backends": 1, "healthy": 1, "default": False},
    ]
    assert [(r["route"], r["pool"], r["match"]) for r in stats["routes"]] == [
        ("0", "api", "host api.example.com"),
        ("1", "web", "path-prefix /static/"),
        ("2", "web", "*"),
    ]


def test_dns_discovery_finds_the_backends_of_the_pool_that_names_it() -> None:
    lb = service({**POOLS, "web": {**POOLS["web"], "dns": ["app.example.com:8000"]}})
    assert lb.pools["web"].discovery is not None
    assert lb.pools["api"].discovery is None and lb.pools["api"].config.dns == ()


def test_the_effective_config_keeps_pools_and_their_live_backends() -> None:
    lb = service()
    lb.pools["api"].add_backend(config_from_mapping({"backends": ["http://127.0.0.1:9102"]}).backends[0])
    config = lb.config
    assert [spec.url for spec in config.pools["api"].settings.backends] == [
        "http://127.0.0.1:9101",
        "http://127.0.0.1:9102",
    ]
    assert config.routes == lb.planner.routes


def test_reload_starts_new_pools_retires_removed_ones_and_swaps_the_router() -> None:
    lb = service()
    lb.startService()
    try:
        plan(lb, b"/", b"api.example.com")
        router, old, api = lb.planner, lb.planner.routing, lb.pools["api"]
        pools = {
            "web": {
                "backends": ["http://127.0.0.1:9001", "http://127.0.0.1:9003"],
                "algorithm": "random-two-choices",
            },
            "img": {"backends": ["http://127.0.0.1:9201"]},
        }
        routes = [{"path-prefix": "/img/", "pool": "img"}, {"pool": "web"}]
        lb.reload(config_from_mapping({"listen": "tcp:0", "pools": pools, "routes": routes}))
        assert set(lb.pools) == {"web", "img"}
        assert lb.planner is router and router.routing is not old
        assert old.pools["api"] is api  # what requests in flight were planned with
        assert not api.running and api.parent is None
        assert lb.pools["img"].running
        assert [b.url for b in lb.pools["web"].backends] == pools["web"]["backends"]
        assert type(lb.pools["web"].balancer) is type(make_balancer("random-two-choices", []))
        assert plan(lb, b"/img/a").pool == "img"
        assert plan(lb, b"/", b"api.example.com").pool == "web"
        assert lb.stats()["routes"][0]["requests"] == 2  # the route figures carry over (by position)
    finally:
        lb.stopService()


def test_reload_keeps_a_pools_restart_settings_and_names_the_pool(logged: List[str]) -> None:
    lb = service()
    pools = {**POOLS, "api": {**POOLS["api"], "health-path": "/ready", "retries": 0}}
    lb.reload(config_from_mapping({"listen": "tcp:1", "pools": pools, "routes": ROUTES}))
    api = lb.pools["api"]
    assert (api.config.health_path, api.dispatcher.retries) == ("/healthz", 0)
    restart = [line for line in logged if "needs a restart" in line]
    assert len(restart) == 2, logged
    assert "reload: listen changed" in restart[0]
    assert "reload: pools.api.health-path changed" in restart[1]


# --- end to end: the runtime API's pools -------------------------------------------------------------


async def call(http: Any, lb: Any, method: str, path: str, body: Any = None) -> Any:
    headers = {b"Authorization": [b"Bearer " + TOKEN.encode()]}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers[b"Content-Type"] = [b"application/json"]
    response = await http.request(method, f"{lb.admin_url}/api/v1/{path}", data=data, headers=headers)
    response.json_body = json.loads(await response.content())
    return response


@pytest_twisted.ensureDeferred
async def test_api_pools_and_their_backends(make_backends, start_powerlb, http):
    a, b, c = make_backends(3)
    pools = {"default": {"backends": [a.url]}, "api": {"backends": [b.url], "algorithm": "least-connections"}}
    lb = start_powerlb([a], admin=ADMIN, admin_token=TOKEN, pools=pools)
    listed = await call(http, lb, "GET", "pools")
    assert [(p["name"], p["default"]) for p in listed.json_body["pools"]] == [
        ("default", True),
        ("api", False),
    ]
    api_id = b.url.partition("://")[2]
    one = await call(http, lb, "GET", "pools/api")
    assert (one.code, [x["id"] for x in one.json_body["backends"]]) == (200, [api_id])
    assert [x["url"] for x in (await call(http, lb, "GET", "backends")).json_body["backends"]] == [a.url]
    added = await call(http, lb, "POST", "pools/api/backends", {"url": c.url, "weight": 3})
    c_id = c.url.partition("://")[2]
    assert (added.code, added.json_body["pool"], added.json_body["weight"]) == (201, "api", 3)
    assert added.headers.getRawHeaders(b"location") == [f"/api/v1/pools/api/backends/{c_id}".encode()]
    assert [spec.url for spec in lb.service.pools["api"].config.backends] == [b.url, c.url]
    assert [x.url for x in lb.service.pools["default"].backends] == [a.url]
    patched = await call(http, lb, "PATCH", f"pools/api/backends/{c_id}", {"state": "draining"})
    assert (patched.code, patched.json_body["state"]) == (200, "draining")
    missing = await call(http, lb, "GET", f"backends/{c_id}")  # not in the default pool
    assert missing.code == 404
    removed = await call(http, lb, "DELETE", f"pools/api/backends/{api_id}")
    assert (removed.code, removed.json_body["removed"]) == (200, api_id)
    last = await call(http, lb, "DELETE", f"pools/api/backends/{c_id}")
    assert last.code == 409
    unknown = await call(http, lb, "GET", "pools/nope/backends")
    assert (unknown.code, unknown.json_body["error"]) == (404, "no pool 'nope'; the pools are: default, api")
    assert await backends_hit(http, lb.url, 2) == ["a", "a"]  # the request path: still the default pool


@pytest_twisted.ensureDeferred
async def test_pools_are_health_checked_each_on_its_own_path(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    pools = {"default": {"backends": [a.url]}, "api": {"backends": [b.url], "health-path": "/healthz"}}
    lb = start_powerlb([a], pools=pools, health_interval=0.05)
    await wait_for(lambda: b"/healthz" in [r.uri for r in b.requests])
    assert b"/healthz" not in [r.uri for r in a.requests]
    assert lb.service.pools["api"].health is not lb.service.pools["default"].health


@pytest_twisted.ensureDeferred
async def test_metrics_carry_pool_and_route_labels(make_backends, start_powerlb, http):
    a, b = make_backends(2)
    pools = {"default": {"backends": [a.url]}, "api": {"backends": [b.url]}}
    routes = [{"path-prefix": "/api/", "pool": "api", "deny": "0.0.0.0/0"}, {"pool": "default"}]
    lb = start_powerlb([a], admin=ADMIN, pools=pools, routes=routes)
    await backends_hit(http, lb.url, 2)
    assert (await fetch(http, lb.url + "/api/x")).code == 403
    samples = await scrape(http, lb)
    assert samples[("powerlb_backend_requests_total", (("backend", a.url), ("pool", "default")))] == 2
    assert samples[("powerlb_backend_up", (("backend", b.url), ("pool", "api")))] == 1.0
    assert samples[("powerlb_route_requests_total", (("pool", "api"), ("route", "0")))] == 1
    assert samples[("powerlb_route_requests_total", (("pool", "default"), ("route", "1")))] == 2
    assert samples[("powerlb_policy_refusals_total", (("policy", "acl"), ("route", "0")))] == 1
