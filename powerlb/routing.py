"""Routes: which pool (and which policies) a request gets, pure (sans-IO).

A :class:`Route` has match keys (host, path prefix, path regex, methods, headers), the
pool its requests go to and its policies (:mod:`powerlb.policies`). A :class:`RouteTable`
compiles a list of routes; :meth:`RouteTable.match` returns the first route whose keys all
match, or None (answered 404 with :data:`NO_ROUTE_REASON`).

Matching is fast whatever the number of routes. At compile time the routes are sorted into
plans by host (exact names, then wildcard suffixes, longest first, looked up in dicts) and by
method, so a request only tries the routes that can match its host and method; in a plan,
consecutive routes with only path prefixes are tried as one dict lookup per prefix length,
consecutive routes with only path keys (prefix, regex) as one compiled regex, and
consecutive routes with only an exact value of one header as one dict lookup, and a run of
routes mixing such keys (each route one key) as one regex and one dict lookup per header name,
the lowest position found winning. A table whose
first route is a catch-all answers it at once, and one without host keys never reads the host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, List, Match, Optional, Pattern, Sequence, Tuple

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
_PREFIXES = 1  # test is (lengths, {prefix: position}): the first position of a path prefix matched
_PATHS = 2  # test is a compiled alternation of path keys; routes[owner[lastindex]] matched
_VALUES = 3  # test is (name, {value: position}): the first position of a field's value matched
_CHECK = 4  # test(path, headers) says whether routes[0] matches
_FIRST = 5  # test is (path regex match or None, owner, {name: {value: position}}): the lowest position

#: A run of path prefixes of more distinct lengths than this is matched as a regex.
_MAX_PREFIX_LENGTHS = 8

Step = Tuple[int, Any, Tuple[Route, ...]]
Plan = Tuple[Step, ...]

#: The flags of a regex without global inline flags.
_PLAIN_FLAGS = re.compile(b"").flags
#: Back-references and conditionals, which would break in a combined regex (group numbers shift).
_BACKREFERENCE = re.compile(rb"\\[1-9]|\(\?P=|\(\?\(")


def _path_alternative(route: Route) -> Optional[bytes]:
    """The route's path keys as a regex matching the path from its start (prefix: a lookahead;
    regex: found anywhere after it), or None when the route has other keys or a regex that
    cannot be combined (global flags, named groups, back-references)."""
    if route.headers or not (route.path_prefix or route.path_regex):
        return None
    regex = route.path_regex
    if route.path_prefix is not None and regex is None:
        return re.escape(route.path_prefix)
    parts = []
    if route.path_prefix is not None:
        parts.append(b"(?=" + re.escape(route.path_prefix) + b")")
    if regex is not None:
        if regex.flags != _PLAIN_FLAGS or regex.groupindex or _BACKREFERENCE.search(regex.pattern):
            return None
        anchored = regex.pattern.startswith(b"^") and b"|" not in regex.pattern
        parts.append((b"(?:" if anchored else b"(?s:.*?)(?:") + regex.pattern + b")")
    return b"".join(parts)


def _header_value(route: Route) -> Optional[HeaderMatch]:
    """The route's one key if it is an exact header value."""
    if route.path_prefix or route.path_regex or len(route.headers) != 1 or route.headers[0].value is None:
        return None
    return route.headers[0]


def _check(route: Route) -> Callable[[bytes, Headers], bool]:
    prefix, regex, keys = route.path_prefix, route.path_regex, route.headers
    search = None if regex is None else regex.search

    def check(path: bytes, headers: Headers) -> bool:
        if prefix is not None and not path.startswith(prefix):
            return False
        if search is not None and search(path) is None:
            return False
        return all(key.matches(headers) for key in keys)

    return check


def _paths_regex(run: Sequence[Tuple[int, Route, bytes]]) -> Tuple[Callable[[bytes], Any], Dict[int, int]]:
    """One regex trying the path keys of ``run`` (position, route, alternative) in order, and the
    position of each alternative's group: the first alternative that matches wins, and the last
    group to close, ``lastindex``, is the alternative's own."""
    owner: Dict[int, int] = {}
    group = 1
    for position, route, _ in run:
        owner[group] = position
        group += 1 + (route.path_regex.groups if route.path_regex is not None else 0)
    pattern = b"|".join(b"(" + alternative + b")" for _, _, alternative in run)
    return re.compile(pattern).match, owner


def _paths_step(run: List[Tuple[Route, bytes]]) -> Step:
    """One regex trying the path keys of ``run`` in order (:func:`_paths_regex`)."""
    test = _paths_regex([(position, route, alternative) for position, (route, alternative) in enumerate(run)])
    return (_PATHS, test, tuple(route for route, _ in run))


def _first_step(run: List[Tuple[Route, Optional[bytes], Optional[HeaderMatch]]]) -> Step:
    """Routes each with one key, a path key or an exact header value, of more than one kind or
    header: the first route matching is the lowest position among the first path key matching (one
    regex) and the header values found (one dict per header name)."""
    paths = [(position, route, path) for position, (route, path, _) in enumerate(run) if path is not None]
    values: Dict[bytes, Dict[bytes, int]] = {}
    for position, (_, _, key) in enumerate(run):
        if key is not None:
            values.setdefault(key.name, {}).setdefault(key.value or b"", position)
    match, owner = _paths_regex(paths) if paths else (None, {})
    return (_FIRST, (match, owner, values), tuple(route for route, _, _ in run))


def _path_steps(run: List[Tuple[Route, bytes]]) -> List[Step]:
    """Steps for a run of routes with only path keys: a dict lookup per prefix length when they
    are all prefixes of few lengths, else one regex."""
    if any(route.path_regex is not None for route, _ in run):
        return [_paths_step(run)]
    positions: Dict[bytes, int] = {}
    for position, (route, _) in enumerate(run):
        positions.setdefault(route.path_prefix or b"", position)
    lengths = sorted({len(prefix) for prefix in positions})
    if len(lengths) > _MAX_PREFIX_LENGTHS:
        return [_paths_step(run)]
    return [(_PREFIXES, (lengths, positions), tuple(route for route, _ in run))]


def _values_step(run: List[Tuple[Route, HeaderMatch]]) -> Step:
    positions: Dict[bytes, int] = {}
    for position, (_, key) in enumerate(run):
        positions.setdefault(key.value or b"", position)
    return (_VALUES, (run[0][1].name, positions), tuple(route for route, _ in run))


def _plan(routes: Sequence[Route]) -> Plan:
    """Steps trying ``routes`` in order; their host and method keys are known to match already.

    Consecutive routes with only path keys become one regex, consecutive routes with only an
    exact value of one header one dict lookup."""
    steps: List[Step] = []
    #: A run of routes with one key each: a path key (its alternative) or an exact header value.
    run: List[Tuple[Route, Optional[bytes], Optional[HeaderMatch]]] = []

    def flush() -> None:
        paths = [(route, path) for route, path, _ in run if path is not None]
        values = [(route, key) for route, _, key in run if key is not None]
        if len(paths) == len(run) and paths:
            steps.extend(_path_steps(paths))
        elif len(values) == len(run) and values and len({key.name for _, key in values}) == 1:
            steps.append(_values_step(values))
        elif run:
            steps.append(_first_step(run))
        run.clear()

    for route in routes:
        alternative = _path_alternative(route)
        key = None if alternative is not None else _header_value(route)
        if alternative is not None or key is not None:
            run.append((route, alternative, key))
            continue
        flush()
        if not (route.path_prefix or route.path_regex or route.headers):
            steps.append((_ALWAYS, None, (route,)))
            return tuple(steps)  # the routes after it can never match
        steps.append((_CHECK, _check(route), (route,)))
    flush()
    return tuple(steps)


class _Plans:
    """The plans for one host: by method, and for the methods no route names."""

    __slots__ = ("by_method", "other")

    def __init__(self, routes: Sequence[Route]) -> None:
        methods = {method for route in routes for method in route.methods}
        self.by_method: Dict[bytes, Plan] = {
            method: _plan([r for r in routes if not r.methods or method in r.methods]) for method in methods
        }
        self.other: Plan = _plan([r for r in routes if not r.methods])


class RouteTable:
    """Routes compiled for fast first-match lookups (see the module docstring)."""

    def __init__(self, routes: Sequence[Route]) -> None:
        self.routes: Tuple[Route, ...] = tuple(routes)
        exact = {host for route in self.routes for host in route.hosts if not host.startswith(b"*.")}
        wild = {host[1:] for route in self.routes for host in route.hosts if host.startswith(b"*.")}
        self._exact: Dict[bytes, _Plans] = {host: self._plans_for(host) for host in exact}
        # A request host's longest matching wildcard suffix decides which wildcards match it:
        # the suffix's own and those of the shorter suffixes it ends with. A name standing for it.
        self._wild: Dict[bytes, _Plans] = {
            suffix: self._plans_for(b"x" + suffix, wildcards_only=True) for suffix in wild
        }
        self._default = self._plans_for(b"")
        #: The route every request matches, when the first route has no match keys (a catch-all).
        self._first = self.routes[0] if self.routes and self.routes[0].matches_everything else None

    def _plans_for(self, host: bytes, wildcards_only: bool = False) -> _Plans:
        def takes(pattern: bytes) -> bool:
            return (pattern.startswith(b"*.") or not wildcards_only) and _host_matches(pattern, host)

        return _Plans([r for r in self.routes if not r.hosts or any(takes(p) for p in r.hosts)])

    def match(self, method: bytes, host: Optional[bytes], path: bytes, headers: Headers) -> Optional[Route]:
        """The first route matching the request, or None.

        ``host`` is the ``Host`` value as received (port and case do not matter); ``path`` is the
        request target's path (a query, from ``?``, is ignored); ``headers`` the request's."""
        if self._first is not None:  # a catch-all comes first: every request is its
            return self._first
        plans = self._default
        if self._exact or self._wild:  # some route has a host key
            name = split_host(host)[0] if host else b""
            found = self._exact.get(name)
            if found is not None:
                plans = found
            elif self._wild:
                dot = name.find(b".", 1)
                while dot > 0:
                    found = self._wild.get(name[dot:])
                    if found is not None:
                        plans = found
                        break
                    dot = name.find(b".", dot + 1)
        steps = plans.by_method.get(method, plans.other) if plans.by_method else plans.other
        query = path.find(b"?")
        if query >= 0:
            path = path[:query]
        for kind, test, routes in steps:
            if kind == _PREFIXES:
                lengths, prefixes = test
                best = len(routes)
                for length in lengths:
                    position = prefixes.get(path[:length], best)
                    if position < best:
                        best = position
                if best < len(routes):
                    return routes[best]
            elif kind == _PATHS:
                owner: Dict[Optional[int], int] = test[1]  # lastindex is never None on a match
                found_path: Optional[Match[bytes]] = test[0](path)
                if found_path is not None:
                    return routes[owner[found_path.lastindex]]
            elif kind == _VALUES:
                field, positions = test
                best = len(routes)
                for key, value in headers:
                    if key == field:
                        position = positions.get(value, best)
                        if position < best:
                            best = position
                if best < len(routes):
                    return routes[best]
            elif kind == _FIRST:
                match, owner, values = test
                best = len(routes)
                if match is not None:
                    found_path = match(path)
                    if found_path is not None:
                        best = owner[found_path.lastindex]
                for key, value in headers:
                    table = values.get(key)
                    if table is not None:
                        position = table.get(value, best)
                        if position < best:
                            best = position
                if best < len(routes):
                    return routes[best]
            elif kind == _CHECK:
                if test(path, headers):
                    return routes[0]
            else:
                return routes[0]
        return None
