"""The router: the :class:`~powerlb.plan.IPlanner` of a running powerlb.

:class:`Router` matches each request against the routes (:class:`~powerlb.routing.RouteTable`,
first match wins; none: 404 with :data:`~powerlb.routing.NO_ROUTE_REASON`), applies the matched
route's policies (:func:`~powerlb.policies.admit`: access list, redirect, rate limit, on the
client address that ``trusted-proxies`` gives) and answers the plan: the route, its pool's
dispatcher and sticky cookie, and the request id. The service keeps one Router: a reload swaps
its :class:`Routing` (routes, pools, rate limiters) in one step; the figures carry over.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from zope.interface import implementer

from powerlb.headers import Headers, get_all
from powerlb.plan import Decision, IPlanner, RequestPlan
from powerlb.policies import Clock, RateLimiter, Refusal, admit, client_address, request_id
from powerlb.pool import Pool
from powerlb.routing import NO_ROUTE_REASON, Route, RouteTable

#: The policy a request no route matches is counted under (route label ``none``).
NO_ROUTE = "no-route"
#: The route label of the requests no route matches.
UNROUTED = "none"


def route_label(route: Route) -> str:
    """A route's label in the stats and metrics: its position in ``routes:``."""
    return str(route.index)


class RouteCounters:
    """Requests per route and refusals per route and policy (they outlive a reload)."""

    def __init__(self) -> None:
        self.requests: Dict[str, int] = {}
        self.refusals: Dict[Tuple[str, str], int] = {}

    def snapshot(self, routes: Sequence[Route]) -> List[Dict[str, Any]]:
        """The stats' ``routes``: each route's label, pool, match keys in brief, requests and
        refusals by policy (and a ``none`` entry once a request matched no route)."""
        out = []
        for route in routes:
            label = route_label(route)
            out.append(
                {
                    "route": label,
                    "pool": route.pool,
                    "match": describe(route),
                    "requests": self.requests.get(label, 0),
                    "refusals": self._refusals(label),
                }
            )
        if UNROUTED in self.requests:
            out.append(
                {
                    "route": UNROUTED,
                    "pool": None,
                    "match": "no route matched",
                    "requests": self.requests[UNROUTED],
                    "refusals": self._refusals(UNROUTED),
                }
            )
        return out

    def _refusals(self, label: str) -> Dict[str, int]:
        return {policy: count for (route, policy), count in self.refusals.items() if route == label}


def describe(route: Route) -> str:
    """A route's match keys in one short line (``*`` for a catch-all)."""
    parts = []
    if route.hosts:
        parts.append("host " + ",".join(host.decode("ascii", "replace") for host in route.hosts))
    if route.methods:
        parts.append("method " + ",".join(sorted(m.decode("ascii", "replace") for m in route.methods)))
    if route.path_prefix is not None:
        parts.append("path-prefix " + route.path_prefix.decode("latin-1"))
    if route.path_regex is not None:
        parts.append("path-regex " + route.path_regex.pattern.decode("latin-1"))
    for key in route.headers:
        parts.append("header " + key.name.decode("latin-1"))
    return " ".join(parts) or "*"


class RouteUse:
    """What planning a request on one route reads, worked out once per configuration: its
    ``label``, its rate ``limiter`` (None without ``rate-limit``), and whether a policy may refuse
    its requests (``guarded``: an access list, a redirect or a rate limit)."""

    __slots__ = ("guarded", "label", "limiter")

    def __init__(self, route: Route, limiter: Optional[RateLimiter]) -> None:
        self.label = route_label(route)
        self.limiter = limiter
        self.guarded = bool(route.acl) or route.redirect is not None or limiter is not None


class Routing:
    """One configuration's routes, compiled, the pools they name and their rate limiters
    (immutable once built: a reload builds another)."""

    def __init__(self, routes: Sequence[Route], pools: Mapping[str, Pool], clock: Clock) -> None:
        self.routes = tuple(routes)
        self.table = RouteTable(self.routes)
        self.pools = dict(pools)
        self.limiters: Dict[int, RateLimiter] = {
            route.index: RateLimiter(route.rate_limit, clock)
            for route in self.routes
            if route.rate_limit is not None
        }
        #: Each route's :class:`RouteUse`, by the route's ``id`` (a route compares by value: slow).
        self.uses: Dict[int, RouteUse] = {
            id(route): RouteUse(route, self.limiters.get(route.index)) for route in self.routes
        }


@implementer(IPlanner)
class Router:
    """Plans requests over ``routes`` to ``pools`` (by name): see the module docstring.

    ``clock`` times the rate limits; ``trusted_proxies`` (addresses or networks) are the proxies
    whose ``X-Forwarded-For`` names the client; ``request_id_header`` names the request id's
    header. :meth:`update` swaps in a reloaded configuration's routes and pools in one step
    (``routing``); the figures (``counters``) carry over."""

    def __init__(
        self,
        routes: Sequence[Route],
        pools: Mapping[str, Pool],
        clock: Clock,
        trusted_proxies: Sequence[str] = (),
        request_id_header: str = "X-Request-ID",
    ) -> None:
        self.clock = clock
        self.trusted = tuple(ipaddress.ip_network(net, strict=False) for net in trusted_proxies)
        self.request_id_header = request_id_header.lower().encode("ascii")
        self.counters = RouteCounters()
        self.routing = Routing(routes, pools, clock)

    @property
    def routes(self) -> Tuple[Route, ...]:
        """The routes in use."""
        return self.routing.routes

    def update(self, routes: Sequence[Route], pools: Mapping[str, Pool]) -> None:
        """Plan the next requests over ``routes`` and ``pools`` (a reload); the requests planned
        before keep the pools they were given. Rate limits start afresh."""
        self.routing = Routing(routes, pools, self.clock)

    def snapshot(self) -> List[Dict[str, Any]]:
        """The stats' ``routes`` (see :meth:`RouteCounters.snapshot`)."""
        return self.counters.snapshot(self.routing.routes)

    def plan(
        self, method: bytes, scheme: bytes, host: Optional[bytes], target: bytes, headers: Headers, peer: str
    ) -> Decision:
        """The request's plan, or its refusal (each counted by route and policy)."""
        counters, routing = self.counters, self.routing
        route = routing.table.match(method, host, target, headers)
        if route is None:
            counters.requests[UNROUTED] = counters.requests.get(UNROUTED, 0) + 1
            key = (UNROUTED, NO_ROUTE)
            counters.refusals[key] = counters.refusals.get(key, 0) + 1
            return Refusal(NO_ROUTE, 404, NO_ROUTE_REASON, [])
        use = routing.uses[id(route)]
        label = use.label
        counters.requests[label] = counters.requests.get(label, 0) + 1
        if use.guarded:  # else no policy refuses: the client address is not needed
            client = client_address(peer, get_all(headers, b"x-forwarded-for"), self.trusted)
            refusal = admit(route, client, use.limiter, scheme, host, target)
            if refusal is not None:
                key = (label, refusal.policy)
                counters.refusals[key] = counters.refusals.get(key, 0) + 1
                return refusal
        assert route.pool is not None  # only a redirect-only route has none, and it refused above
        pool = routing.pools[route.pool]
        identifier = request_id(headers, self.request_id_header)
        return RequestPlan(route, route.pool, pool.dispatcher, pool.sticky, identifier)
