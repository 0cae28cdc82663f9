"""Tests for powerlb.routing: match keys, first-match semantics and the compiled RouteTable."""

from __future__ import annotations

import dataclasses
import re
from typing import List, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from powerlb.headers import Headers
from powerlb.policies import split_host
from powerlb.routing import HeaderMatch, Route, RouteTable

API = Route(pool="api", hosts=(b"api.example.com",), index=0)
WILD = Route(pool="wild", hosts=(b"*.example.com",), index=1)
STATIC = Route(pool="web", path_prefix=b"/static/", index=2)
POST = Route(pool="writes", methods=frozenset({b"POST", b"PUT"}), index=3)
CANARY = Route(pool="canary", headers=(HeaderMatch(b"x-canary", value=b"1"),), index=4)
PHP = Route(pool="php", path_regex=re.compile(rb"\.php$"), index=5)
AGENT = Route(pool="bots", headers=(HeaderMatch(b"user-agent", regex=re.compile(rb"(?i)bot")),), index=6)
CATCH_ALL = Route(pool="web", index=7)
TABLE = RouteTable([API, WILD, STATIC, POST, CANARY, PHP, AGENT, CATCH_ALL])


@pytest.mark.parametrize(
    ("method", "host", "path", "headers", "expected"),
    [
        (b"GET", b"api.example.com", b"/", [], API),
        (b"GET", b"API.Example.COM:8443", b"/", [], API),  # case and port ignored
        (b"GET", b"api.example.com.", b"/", [], API),  # trailing dot
        (b"GET", b"www.example.com", b"/", [], WILD),
        (b"GET", b"a.b.example.com", b"/", [], WILD),  # one or more labels
        (b"GET", b"example.com", b"/static/x", [], STATIC),  # the bare suffix is not a wildcard match
        (b"GET", None, b"/static/x", [], STATIC),
        (b"GET", b"other", b"/static", [], CATCH_ALL),  # /static is not under /static/
        (b"POST", b"other", b"/static/x", [], STATIC),  # first match wins
        (b"PUT", b"other", b"/x", [], POST),
        (b"get", b"other", b"/x", [], CATCH_ALL),  # methods are case-sensitive
        (b"GET", b"other", b"/x", [(b"x-canary", b"0"), (b"x-canary", b"1")], CANARY),
        (b"GET", b"other", b"/x", [(b"x-canary", b"11")], CATCH_ALL),  # exact value
        (b"GET", b"other", b"/index.php", [], PHP),
        (b"GET", b"other", b"/index.php?x=1", [], PHP),  # the query is not part of the path
        (b"GET", b"other", b"/index.html?a.php", [], CATCH_ALL),
        (b"GET", b"other", b"/", [(b"user-agent", b"GoogleBot/2.1")], AGENT),
        (b"GET", b"[::1]:8080", b"/", [], CATCH_ALL),
    ],
)
def test_table(method: bytes, host: Optional[bytes], path: bytes, headers: Headers, expected: Route) -> None:
    assert TABLE.match(method, host, path, headers) is expected


def test_no_match_is_none() -> None:
    table = RouteTable([API, STATIC])
    assert table.match(b"GET", b"other", b"/", []) is None
    assert RouteTable([]).match(b"GET", b"x", b"/", []) is None


def test_exact_host_also_takes_wildcards_and_hostless_routes_in_order() -> None:
    wild = Route(pool="wild", hosts=(b"*.example.com",), path_prefix=b"/w", index=0)
    exact = Route(pool="exact", hosts=(b"api.example.com",), path_prefix=b"/e", index=1)
    any_host = Route(pool="any", path_prefix=b"/", index=2)
    table = RouteTable([wild, exact, any_host])
    assert table.match(b"GET", b"api.example.com", b"/w", []) is wild
    assert table.match(b"GET", b"api.example.com", b"/e", []) is exact
    assert table.match(b"GET", b"api.example.com", b"/x", []) is any_host
    assert table.match(b"GET", b"www.example.com", b"/e", []) is any_host


def test_nested_wildcards() -> None:
    outer = Route(pool="outer", hosts=(b"*.example.com",), path_prefix=b"/o", index=0)
    inner = Route(pool="inner", hosts=(b"*.eu.example.com",), index=1)
    table = RouteTable([outer, inner])
    assert table.match(b"GET", b"x.eu.example.com", b"/o", []) is outer
    assert table.match(b"GET", b"x.eu.example.com", b"/p", []) is inner
    assert table.match(b"GET", b"eu.example.com", b"/p", []) is None


def test_several_hosts_on_one_route() -> None:
    route = Route(pool="p", hosts=(b"a.test", b"*.b.test"))
    table = RouteTable([route])
    assert table.match(b"GET", b"a.test", b"/", []) is route
    assert table.match(b"GET", b"x.b.test", b"/", []) is route
    assert table.match(b"GET", b"b.test", b"/", []) is None


def test_a_run_mixing_path_and_header_keys_is_one_step_and_keeps_the_first_match() -> None:
    """Path prefixes, path regexes and exact values of two headers, interleaved (as in the routes
    benchmark): one step for the run (one regex, one dict per header), the lowest position wins."""
    tenant = Route(pool="tenant", headers=(HeaderMatch(b"x-tenant", value=b"t1"),), index=0)
    admin = Route(pool="admin", path_prefix=b"/admin/", index=1)
    api = Route(pool="api", path_regex=re.compile(rb"^/v1/[a-z]+$"), index=2)
    beta = Route(pool="beta", headers=(HeaderMatch(b"x-beta", value=b"1"),), index=3)
    rest = Route(pool="rest", index=4)
    table = RouteTable([tenant, admin, api, beta, rest])
    assert len(table._default.other) == 2  # the run, then the catch-all
    cases = [
        (b"/admin/x", [], admin),
        (b"/admin/x", [(b"x-tenant", b"t1")], tenant),  # the header route comes first
        (b"/v1/users", [(b"x-beta", b"1")], api),  # the path route comes first
        (b"/v1/Users", [(b"x-beta", b"1")], beta),
        (b"/v1/Users", [(b"x-beta", b"2"), (b"x-beta", b"1")], beta),  # any field of the name
        (b"/other", [(b"x-tenant", b"t2")], rest),
    ]
    for path, headers, expected in cases:
        assert table.match(b"GET", b"h", path, headers) is expected, (path, headers)


def test_matches_everything() -> None:
    assert CATCH_ALL.matches_everything
    assert not any(route.matches_everything for route in (API, WILD, STATIC, POST, CANARY, PHP, AGENT))


# -- the compiled table agrees with the reference semantics (Route.matches, in order) -------------

_HOSTS = [b"a.test", b"b.test", b"*.test", b"*.b.test", b"x.b.test"]
_PATHS = [b"/", b"/a", b"/a/", b"/a/b", b"/b", b"/b/c.php"]
_METHODS = [b"GET", b"POST", b"HEAD"]

_REGEXES = [
    re.compile(rb"\.php$"),
    re.compile(rb"^/a"),
    re.compile(b"b"),
    re.compile(rb"/(a|b)/"),  # a group: combined with the others
    re.compile(rb"(?i)/A"),  # global flags: tried on its own
    re.compile(rb"(?P<x>/)b"),  # a named group: on its own
    re.compile(rb"(/)a\1"),  # a back-reference: on its own
    re.compile(rb"(/)?(?(1)b|a)"),  # a conditional: on its own
]
_HEADER_KEYS = [
    HeaderMatch(b"x-k", value=b"1"),
    HeaderMatch(b"x-k", value=b"2x"),
    HeaderMatch(b"x-k", regex=re.compile(b"^2")),
    HeaderMatch(b"x-j", value=b""),
]


def _rarely(values: list) -> st.SearchStrategy:
    """Mostly None: routes with few keys make runs the table combines."""
    return st.sampled_from([None, None, None, *values])


_routes = st.builds(
    Route,
    pool=st.just("p"),
    hosts=_rarely([(host,) for host in _HOSTS] + [(b"a.test", b"*.b.test")]).map(lambda hosts: hosts or ()),
    path_prefix=_rarely(_PATHS),
    path_regex=_rarely(_REGEXES),
    methods=_rarely([frozenset({b"GET"}), frozenset({b"GET", b"POST"})]).map(lambda m: m or frozenset()),
    headers=_rarely([(key,) for key in _HEADER_KEYS] + [tuple(_HEADER_KEYS[:2])]).map(lambda h: h or ()),
)


def _reference(
    routes: List[Route], method: bytes, host: Optional[bytes], path: bytes, headers: Headers
) -> Optional[Route]:
    name = split_host(host)[0]
    for route in routes:
        if route.matches(method, name, path.partition(b"?")[0], headers):
            return route
    return None


@settings(max_examples=200, deadline=None)
@given(
    routes=st.lists(_routes, max_size=16),
    requests=st.lists(
        st.tuples(
            st.sampled_from(_METHODS),
            st.none()
            | st.sampled_from([b"a.test", b"A.TEST:80", b"c.test", b"x.b.test", b"y.x.b.test", b"test"]),
            st.sampled_from([*_PATHS, b"/a?x", b"/b?c.php", b"/zzz", b"/A/b", b"/a/a", b"/b/"]),
            st.lists(
                st.sampled_from([(b"x-k", b"1"), (b"x-k", b"2x"), (b"x-j", b""), (b"x-z", b"1")]), max_size=3
            ),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_table_equals_linear_first_match(routes: List[Route], requests: list) -> None:
    routes = [dataclasses.replace(route, index=index) for index, route in enumerate(routes)]
    table = RouteTable(routes)
    for method, host, path, headers in requests:
        assert table.match(method, host, path, headers) is _reference(routes, method, host, path, headers)


_SEGMENTS = st.lists(st.sampled_from([b"a", b"b", b"ab", b""]), max_size=6).map(
    lambda parts: b"/" + b"/".join(parts)
)


@given(
    prefixes=st.lists(_SEGMENTS, min_size=1, max_size=20), paths=st.lists(_SEGMENTS, min_size=1, max_size=5)
)
def test_runs_of_prefixes_equal_linear_first_match(prefixes: List[bytes], paths: List[bytes]) -> None:
    """Many prefixes of many lengths: looked up by length, or (more than 8 lengths) as a regex."""
    routes = [Route(pool="p", path_prefix=prefix, index=index) for index, prefix in enumerate(prefixes)]
    table = RouteTable(routes)
    for path in paths:
        assert table.match(b"GET", None, path, []) is _reference(routes, b"GET", None, path, [])
