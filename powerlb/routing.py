"""Routes: which pool (and which policies) a request gets, pure (sans-IO).

A :class:`Route` has match keys (host, path prefix, path regex, methods, headers), the
pool its requests go to and its policies (:mod:`powerlb.policies`). A :class:`RouteTable`
compiles a list of routes; :meth:`RouteTable.match` returns the first route whose keys all
match, or None (answered 404 with :data:`NO_ROUTE_REASON`).

Matching is fast whatever the number of routes: hosts are looked up in a dict (exact names,
then wildcard suffixes, longest first), so only the routes that can match a host are tried;
consecutive routes with only a path prefix are tried as one compiled regex.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, FrozenSet, List, Optional, Pattern, Sequence, Tuple

from powerlb.headers import Headers
from powerlb.policies import Acl, HeaderRules, RateLimit, Redirect, split_host

#: The reason of the 404 for a request no route matches.
NO_ROUTE_REASON = b"no route matches this request"


@dataclass(frozen=True)
class HeaderMatch:
    """A header match key: some field ``name`` (lower-case) has exactly ``value``, or a value
    ``regex`` finds a match in (searched, so anchor it with ``^...$`` for a full match)."""

    name: bytes
    value: Optional[bytes] = None
    regex: Optional[Pattern[bytes]] = None

    def matches(self, headers: Headers) -> bool:
        """Whether any field ``name`` of ``headers`` matches."""
        name, value, regex = self.name, self.value, self.regex
        for key, given in headers:
            if key == name and (given == value if regex is None else regex.search(given) is not None):
                return True
        return False


@dataclass(frozen=True)
class Route:
    """A route: match keys, the pool, and the policies. A route without match keys matches every
    request. Bytes are as on the wire; ``hosts`` are lower-case names or ``*.suffix`` wildcards
    (one or more labels before the suffix); ``pool`` is None only on a redirect-only route.
    ``index`` is the route's position in the configuration (for errors, logs and metrics)."""

    pool: Optional[str] = "default"
    hosts: Tuple[bytes, ...] = ()
    path_prefix: Optional[bytes] = None
    path_regex: Optional[Pattern[bytes]] = None
    methods: FrozenSet[bytes] = frozenset()
    headers: Tuple[HeaderMatch, ...] = ()
    cache: bool = True
    cache_key_query: bool = True
    cache_key_headers: Tuple[bytes, ...] = ()
    strip_prefix: Optional[bytes] = None
    add_prefix: Optional[bytes] = None
    request_headers: HeaderRules = field(default_factory=HeaderRules)
    response_headers: HeaderRules = field(default_factory=HeaderRules)
    redirect: Optional[Redirect] = None
    acl: Acl = field(default_factory=Acl)
    rate_limit: Optional[RateLimit] = None
    index: int = 0

    @property
    def matches_everything(self) -> bool:
        """Whether the route has no match keys."""
        return not (self.hosts or self.path_prefix or self.path_regex or self.methods or self.headers)

    def matches(self, method: bytes, host: bytes, path: bytes, headers: Headers) -> bool:
        """Whether every match key matches (``host`` as :func:`~powerlb.policies.split_host` gives
        it, ``path`` without the query). The reference semantics; :class:`RouteTable` is faster."""
        return (
            not self.hosts or any(_host_matches(pattern, host) for pattern in self.hosts)
        ) and _rest_matches(self, method, path, headers)


def _host_matches(pattern: bytes, host: bytes) -> bool:
    if pattern.startswith(b"*."):
        suffix = pattern[1:]
        return host.endswith(suffix) and len(host) > len(suffix)
    return host == pattern


def _rest_matches(route: Route, method: bytes, path: bytes, headers: Headers) -> bool:
    """The keys other than the host."""
    return (
        (not route.methods or method in route.methods)
        and (route.path_prefix is None or path.startswith(route.path_prefix))
        and (route.path_regex is None or route.path_regex.search(path) is not None)
        and all(key.matches(headers) for key in route.headers)
    )


# A compiled plan is a tuple of steps (kind, test, routes), tried in order:
_ALWAYS = 0  # routes[0] matches whatever the request
_PREFIXES = 1  # test is a compiled alternation of path prefixes; routes[group - 1] matched
_CHECK = 2  # test(method, path, headers) says whether routes[0] matches

Step = Tuple[int, Optional[Callable[..., object]], Tuple[Route, ...]]


def _only_prefix(route: Route) -> bool:
    return route.path_prefix is not None and not (route.path_regex or route.methods or route.headers)


def _check(route: Route) -> Callable[[bytes, bytes, Headers], bool]:
    if route.path_regex is not None and not (route.methods or route.path_prefix or route.headers):
        search = route.path_regex.search
        return lambda method, path, headers: search(path) is not None
    return lambda method, path, headers: _rest_matches(route, method, path, headers)


def _plan(routes: Sequence[Route]) -> Tuple[Step, ...]:
    """Steps trying ``routes`` (already known to match the host) in order."""
    steps: List[Step] = []
    run: List[Route] = []

    def end_run() -> None:
        if run:
            alternation = b"|".join(b"(" + re.escape(route.path_prefix or b"") + b")" for route in run)
            steps.append((_PREFIXES, re.compile(alternation).match, tuple(run)))
            run.clear()

    for route in routes:
        if _only_prefix(route):
            run.append(route)
            continue
        end_run()
        if not (route.path_prefix or route.path_regex or route.methods or route.headers):
            steps.append((_ALWAYS, None, (route,)))
            return tuple(steps)  # the routes after it can never match
        steps.append((_CHECK, _check(route), (route,)))
    end_run()
    return tuple(steps)


class RouteTable:
    """Routes compiled for fast first-match lookups (see the module docstring)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: Tuple[Route, ...] = tuple(routes)
        exact = {host for route in self.routes for host in route.hosts if not host.startswith(b"*.")}
        wild = {host[1:] for route in self.routes for host in route.hosts if host.startswith(b"*.")}
        self._exact: Dict[bytes, Tuple[Step, ...]] = {host: self._plan_for(host) for host in exact}
        # A request host's longest matching wildcard suffix decides which wildcards match it:
        # the suffix's own and those of the shorter suffixes it ends with. A name standing for it.
        self._wild: Dict[bytes, Tuple[Step, ...]] = {
            suffix: self._plan_for(b"x" + suffix, wildcards_only=True) for suffix in wild
        }
        self._default = self._plan_for(b"")

    def _plan_for(self, host: bytes, wildcards_only: bool = False) -> Tuple[Step, ...]:
        def takes(pattern: bytes) -> bool:
            return (pattern.startswith(b"*.") or not wildcards_only) and _host_matches(pattern, host)

        return _plan([r for r in self.routes if not r.hosts or any(takes(p) for p in r.hosts)])

    def match(self, method: bytes, host: Optional[bytes], path: bytes, headers: Headers) -> Optional[Route]:
        """The first route matching the request, or None.

        ``host`` is the ``Host`` value as received (port and case do not matter); ``path`` is the
        request target's path (a query, from ``?``, is ignored); ``headers`` the request's."""
        name = split_host(host)[0] if host else b""
        steps = self._exact.get(name)
        if steps is None:
            steps = self._default
            if self._wild:
                dot = name.find(b".", 1)
                while dot > 0:
                    found = self._wild.get(name[dot:])
                    if found is not None:
                        steps = found
                        break
                    dot = name.find(b".", dot + 1)
        query = path.find(b"?")
        if query >= 0:
            path = path[:query]
        for kind, test, routes in steps:
            if kind == _PREFIXES:
                found_prefix = test(path)  # type: ignore[misc]
                if found_prefix is not None:
                    return routes[found_prefix.lastindex - 1]
            elif kind == _CHECK:
                if test(method, path, headers):  # type: ignore[misc]
                    return routes[0]
            else:
                return routes[0]
        return None
