"""The request path carries out the planner's decision: refusals, the route's cache use, cache key,
path rewrite, header rules, the pool's sticky cookie and the request id (powerlb.plan)."""

from __future__ import annotations

from ipaddress import ip_network
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger
from zope.interface import implementer

from powerlb.cachepolicy import primary_key
from powerlb.dispatch import Dispatcher
from powerlb.headers import Headers
from powerlb.plan import Decision, IPlanner, RequestPlan, SinglePool
from powerlb.policies import Acl, HeaderRules, Refusal, cache_key
from powerlb.router import Router
from powerlb.routing import Route
from powerlb.sticky import StickyCookie
from tests.support.caching import CACHEABLE, Proxy, results


@implementer(IPlanner)
class Fixed:
    """Answers every request with ``decision``, and notes what it was asked."""

    def __init__(self, decision: Decision) -> None:
        self.decision = decision
        self.asked: List[Any] = []

    def plan(
        self, method: bytes, scheme: bytes, host: Optional[bytes], target: bytes, headers: Headers, peer: str
    ) -> Decision:
        self.asked.append((method, scheme, host, target, peer))
        return self.decision


def planned(route: Route, **plan: Any) -> Any:
    """A planner factory (for :class:`Proxy`) giving ``route`` on the fake pool's dispatcher."""
    return lambda dispatcher: Fixed(RequestPlan(route, "default", dispatcher, **plan))


def refusing(refusal: Refusal) -> Any:
    return lambda dispatcher: Fixed(refusal)


def test_the_catch_all_route_keys_the_cache_as_before() -> None:
    for target in (b"/x", b"/x?a=1", b"/"):
        assert cache_key(Route(), b"https", b"h:8", target, [(b"accept", b"*/*")]) == primary_key(
            b"https", b"h:8", target
        )


def test_the_router_refuses_on_the_address_behind_trusted_proxies_where_a_route_has_an_acl() -> None:
    """A route with an access list reads X-Forwarded-For behind a trusted proxy; a route without
    policies plans every request whatever that header says; each is counted on its route."""
    admin = Route(path_prefix=b"/admin", acl=Acl(allow=(ip_network("10.0.0.0/8"),)), index=0)
    rest = Route(index=1)
    pool: Any = SimpleNamespace(dispatcher=object(), sticky=None)
    router = Router([admin, rest], {"default": pool}, Clock(), trusted_proxies=["127.0.0.1"])

    def plan(target: bytes, forwarded: bytes) -> Decision:
        return router.plan(b"GET", b"http", b"h", target, [(b"x-forwarded-for", forwarded)], "127.0.0.1")

    decisions = [
        plan(b"/admin/x", b"10.1.2.3"),
        plan(b"/admin/x", b"192.0.2.9"),
        plan(b"/admin/x", b"not an address"),  # the trusted proxy itself is the client
        plan(b"/x", b"192.0.2.9"),
        plan(b"/x", b"not an address"),
    ]
    assert [d.route if isinstance(d, RequestPlan) else d.policy for d in decisions] == [
        admin,
        "acl",
        "acl",
        rest,
        rest,
    ]
    assert [(r["route"], r["requests"], r["refusals"]) for r in router.snapshot()] == [
        ("0", 3, {"acl": 2}),
        ("1", 2, {}),
    ]


def test_single_pool_gives_one_plan_whatever_the_request() -> None:
    dispatcher: Any = object()
    planner = SinglePool(dispatcher, None)
    first = planner.plan(b"GET", b"http", b"a", b"/x", [], "1.2.3.4")
    assert isinstance(first, RequestPlan)
    assert first is planner.plan(b"POST", b"https", None, b"/y", [], "::1")
    assert (first.route, first.pool, first.dispatcher, first.sticky, first.request_id) == (
        Route(),
        "default",
        dispatcher,
        None,
        None,
    )
    assert first.route.cache and first.route.matches_everything


@pytest.mark.parametrize(
    ("refusal", "body", "header"),
    [
        (
            Refusal("acl", 403, b"client address not allowed", []),
            b"403 Forbidden: client address not allowed\n",
            None,
        ),
        (
            Refusal("redirect", 301, b"", [(b"location", b"https://a/x")]),
            b"301 Moved Permanently\n",
            (b"location", b"https://a/x"),
        ),
        (
            Refusal("rate-limit", 429, b"slow down", [(b"retry-after", b"3")]),
            b"429 Too Many Requests: slow down\n",
            (b"retry-after", b"3"),
        ),
    ],
)
def test_a_refusal_is_powerlbs_own_answer_and_nothing_goes_upstream(
    refusal: Refusal, body: bytes, header: Any
) -> None:
    proxy = Proxy(planner=refusing(refusal))
    for request in (proxy.request(), proxy.request(method=b"POST")):
        response = request.response
        assert (response.status, response.body) == (refusal.status, body)
        assert response.header(b"cache-control") == b"no-store"
        if header is not None:
            assert response.header(header[0]) == header[1]
    assert proxy.upstream.requests == []
    assert proxy.counters.errors == 2


def test_a_refused_plain_get_is_not_answered_from_the_cache() -> None:
    """The channel's short way asks the planner too: a stored response never answers a refused request."""
    proxy = Proxy()
    proxy.upstream.answer(200, CACHEABLE, b"stored")
    assert results([proxy.request()]) == [(200, b"stored", b"MISS")]
    proxy.resource.planner = Fixed(Refusal("acl", 403, b"no", []))
    assert proxy.request().response.status == 403
    assert proxy.counters.cache_hits == 0


def test_the_planner_is_asked_with_the_request_and_the_peer() -> None:
    planner: Dict[str, Fixed] = {}

    def make(dispatcher: Dispatcher) -> Fixed:
        planner["it"] = Fixed(RequestPlan(Route(), "default", dispatcher))
        return planner["it"]

    proxy = Proxy(planner=make)
    proxy.upstream.answer(200, CACHEABLE, b"stored")
    proxy.request(b"/x?q", peer="10.0.0.7")
    proxy.request(b"/x?q", peer="10.0.0.8")  # a fast hit
    assert planner["it"].asked == [
        (b"GET", b"http", b"example", b"/x?q", "10.0.0.7"),
        (b"GET", b"http", b"example", b"/x?q", "10.0.0.8"),
    ]


def test_a_route_without_cache_bypasses_it() -> None:
    proxy = Proxy(planner=planned(Route(cache=False)))
    proxy.upstream.answer(200, CACHEABLE, b"one", times=2)
    assert results([proxy.request(), proxy.request()]) == [(200, b"one", b"BYPASS")] * 2
    assert proxy.counters.cache_stores == 0


def test_the_route_rewrites_the_upstream_target_but_not_the_cache_key() -> None:
    proxy = Proxy(planner=planned(Route(strip_prefix=b"/api", add_prefix=b"/v2")))
    proxy.upstream.answer(200, CACHEABLE, b"stored")
    assert results([proxy.request(b"/api/x?q=1"), proxy.request(b"/api/x?q=1")]) == [
        (200, b"stored", b"MISS"),
        (200, b"stored", b"HIT"),
    ]
    assert proxy.sent == [b"/v2/x?q=1"]


def test_the_routes_cache_key_decides_what_is_the_same_object() -> None:
    proxy = Proxy(planner=planned(Route(cache_key_query=False)))
    proxy.upstream.answer(200, CACHEABLE, b"stored")
    assert results([proxy.request(b"/x?a"), proxy.request(b"/x?b")]) == [
        (200, b"stored", b"MISS"),
        (200, b"stored", b"HIT"),
    ]


def test_header_rules_apply_upstream_and_to_every_response_fetched_or_stored() -> None:
    route = Route(
        request_headers=HeaderRules(set=((b"x-env", b"prod"),), remove=(b"x-debug",)),
        response_headers=HeaderRules(add=((b"x-route", b"r1"),), remove=(b"x-secret",)),
    )
    proxy = Proxy(planner=planned(route))
    proxy.upstream.answer(200, [*CACHEABLE, (b"x-secret", b"s")], b"stored")
    miss = proxy.request(headers=[(b"x-debug", b"1"), (b"x-env", b"dev")]).response
    fast_hit = proxy.request().response
    slow_hit = proxy.request(headers=[(b"connection", b"keep-alive")]).response  # through twisted.web
    (exchange,) = proxy.upstream.requests
    assert (exchange.header(b"x-env"), exchange.header(b"x-debug")) == (b"prod", None)
    for response, x_cache in ((miss, b"MISS"), (fast_hit, b"HIT"), (slow_hit, b"HIT")):
        assert response.header(b"x-cache") == x_cache
        assert (response.header(b"x-route"), response.header(b"x-secret")) == (b"r1", None)


def test_the_pools_sticky_cookie_is_set_on_its_responses() -> None:
    proxy = Proxy(planner=planned(Route(cache=False), sticky=StickyCookie("lb")))
    proxy.upstream.answer(200, [], b"x")
    response = proxy.request().response
    assert (response.header(b"set-cookie") or b"").startswith(b"lb=")


def test_the_request_id_goes_upstream_and_to_the_access_log() -> None:
    proxy = Proxy(planner=planned(Route(), request_id=b"abc123"))
    events: List[Dict[str, Any]] = []
    proxy.outcomes.access = Logger(observer=events.append)
    proxy.upstream.answer(200, CACHEABLE, b"stored")
    proxy.request(headers=[(b"x-request-id", b"spoofed")])
    proxy.request()  # a fast hit
    (exchange,) = proxy.upstream.requests
    assert [value for name, value in exchange.headers if name == b"x-request-id"] == [b"abc123"]
    assert [(event["cache"], event["request_id"]) for event in events] == [
        ("MISS", "abc123"),
        ("HIT", "abc123"),
    ]


def test_the_plans_request_id_wins_over_a_header_rule_setting_its_field() -> None:
    route = Route(cache=False, request_headers=HeaderRules(set=((b"x-request-id", b"from-rule"),)))
    proxy = Proxy(planner=planned(route, request_id=b"abc123"))
    proxy.upstream.answer(200, [], b"x")
    proxy.request(headers=[(b"x-request-id", b"spoofed")])
    (exchange,) = proxy.upstream.requests
    assert [value for name, value in exchange.headers if name == b"x-request-id"] == [b"abc123"]


def test_without_a_request_id_none_is_added() -> None:
    proxy = Proxy()
    proxy.upstream.answer(200, [], b"x")
    proxy.request()
    assert proxy.upstream.requests[0].header(b"x-request-id") is None


def test_requests_on_alternating_routes_each_get_their_own_routes_work() -> None:
    """What a route takes is remembered for the last route only: alternating routes each get theirs."""
    tagged = Route(response_headers=HeaderRules(set=((b"x-route", b"tagged"),)), cache_key_query=False)
    plain = Route()

    @implementer(IPlanner)
    class Alternating:
        def __init__(self, dispatcher: Dispatcher) -> None:
            self.plans = [RequestPlan(route, "default", dispatcher) for route in (tagged, plain)]
            self.count = 0

        def plan(
            self,
            method: bytes,
            scheme: bytes,
            host: Optional[bytes],
            target: bytes,
            headers: Headers,
            peer: str,
        ) -> Decision:
            self.count += 1
            return self.plans[target.startswith(b"/plain")]

    proxy = Proxy(planner=Alternating)
    proxy.upstream.answer(200, CACHEABLE, b"x", times=None)
    targets = [b"/t?1", b"/plain?1", b"/t?2", b"/plain?2", b"/t?3", b"/plain?1"]
    responses = [proxy.request(target).response for target in targets]
    assert [r.header(b"x-route") for r in responses] == [b"tagged", None] * 3
    assert [r.header(b"x-cache") for r in responses] == [b"MISS", b"MISS", b"HIT", b"MISS", b"HIT", b"HIT"]
