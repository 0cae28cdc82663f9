"""The router: the :class:`~powerlb.plan.IPlanner` of a running powerlb.

:class:`Router` matches each request against the routes (:class:`~powerlb.routing.RouteTable`,
first match wins; none: 404 with :data:`~powerlb.routing.NO_ROUTE_REASON`), applies the matched
route's policies (:func:`~powerlb.policies.admit`: access list, redirect, rate limit, on the
client address that ``trusted-proxies`` gives) and answers the plan: the route, its pool's
dispatcher and sticky cookie, and the request id. A reload builds a new Router and swaps it in
whole; the figures (:class:`RouteCounters`) carry over.
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
    """Requests per route and refusals per route and policy (they outlive a reload's Router)."""

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


@implementer(IPlanner)
class Router:
    """Plans requests over ``routes`` to ``pools`` (by name): see the module docstring.

    ``clock`` times the rate limits; ``trusted_proxies`` (addresses or networks) are the proxies
    whose ``X-Forwarded-For`` names the client; ``request_id_header`` names the request id's
    header. ``counters`` keeps the figures across reloads (a new one when None)."""

    def __init__(
        self,
        routes: Sequence[Route],
        pools: Mapping[str, Pool],
        clock: Clock,
        trusted_proxies: Sequence[str] = (),
        request_id_header: str = "X-Request-ID",
        counters: Optional[RouteCounters] = None,
    ) -> None:
        self.routes = tuple(routes)
        self.table = RouteTable(self.routes)
        self.pools = dict(pools)
        self.trusted = tuple(ipaddress.ip_network(net, strict=False) for net in trusted_proxies)
        self.request_id_header = request_id_header.lower().encode("ascii")
        self.counters = RouteCounters() if counters is None else counters
        self.limiters: Dict[int, RateLimiter] = {
            route.index: RateLimiter(route.rate_limit, clock)
            for route in self.routes
            if route.rate_limit is not None
        }

    def plan(
        self, method: bytes, scheme: bytes, host: Optional[bytes], target: bytes, headers: Headers, peer: str
    ) -> Decision:
        """The request's plan, or its refusal (each counted by route and policy)."""
        counters = self.counters
        route = self.table.match(method, host, target, headers)
        if route is None:
            counters.requests[UNROUTED] = counters.requests.get(UNROUTED, 0) + 1
            key = (UNROUTED, NO_ROUTE)
            counters.refusals[key] = counters.refusals.get(key, 0) + 1
            return Refusal(NO_ROUTE, 404, NO_ROUTE_REASON, [])
        label = route_label(route)
        counters.requests[label] = counters.requests.get(label, 0) + 1
        client = client_address(peer, get_all(headers, b"x-forwarded-for"), self.trusted)
        refusal = admit(route, client, self.limiters.get(route.index), scheme, host, target)
        if refusal is not None:
            key = (label, refusal.policy)
            counters.refusals[key] = counters.refusals.get(key, 0) + 1
            return refusal
        assert route.pool is not None  # only a redirect-only route has none, and it refused above
        pool = self.pools[route.pool]
        _, identifier = request_id(headers, self.request_id_header)
        return RequestPlan(route, route.pool, pool.dispatcher, pool.sticky, identifier)
