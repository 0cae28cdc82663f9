"""Tests for the pure RFC 9111 caching policy."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerlb.cachepolicy import (
    MAX_DELTA_SECONDS,
    StorePlan,
    corrected_initial_age,
    current_age,
    format_age,
    freshness_lifetime,
    parse_cache_control,
    parse_http_date,
    plan_store,
    primary_key,
    request_is_cacheable,
    vary_values,
)
from powerlb.headers import Headers

# 1994-11-06 08:49:37 GMT
T0 = 784111777.0
DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"
DATE_PLUS_100 = b"Sun, 06 Nov 1994 08:51:17 GMT"


# --- parse_cache_control (RFC 9111 section 5.2) -----------------------------------------------

PARSE_CASES: List[Tuple[str, List[bytes], Dict[bytes, Optional[bytes]]]] = [
    ("5.2 token argument", [b"max-age=60"], {b"max-age": b"60"}),
    ("5.2 names lower-cased", [b"Max-Age=60, PUBLIC"], {b"max-age": b"60", b"public": None}),
    ("5.2 no argument is None", [b"no-store"], {b"no-store": None}),
    ("5.2 quoted-string unquoted", [b'private="set-cookie"'], {b"private": b"set-cookie"}),
    ("5.2 comma inside quotes", [b'no-cache="a, b", x'], {b"no-cache": b"a, b", b"x": None}),
    ("5.2 quoted-pair unescaped", [b'ext="a\\"b\\\\"'], {b"ext": b'a"b\\'}),
    ("5.2 whitespace tolerated", [b"  public ,\tmax-age=5  "], {b"public": None, b"max-age": b"5"}),
    ("5.2 several field lines", [b"public", b"max-age=5"], {b"public": None, b"max-age": b"5"}),
    ("5.2 empty elements skipped", [b",, public,,"], {b"public": None}),
    ("5.2 malformed empty argument skipped", [b"max-age=, public"], {b"public": None}),
    ("5.2 malformed spaces in token skipped", [b"max age=5, public"], {b"public": None}),
    ("5.2 unterminated quote skipped", [b'private="x, public'], {b"public": None}),
    ("5.2 bad token chars skipped", [b"max-age=(5), s-maxage=7"], {b"s-maxage": b"7"}),
    ("4.2.1 duplicate: first wins", [b"max-age=5", b"max-age=9"], {b"max-age": b"5"}),
    ("5.2 empty field", [b""], {}),
]


@pytest.mark.parametrize(
    ("values", "expected"), [c[1:] for c in PARSE_CASES], ids=[c[0] for c in PARSE_CASES]
)
def test_parse_cache_control(values: List[bytes], expected: Dict[bytes, Optional[bytes]]) -> None:
    """RFC 9111 section 5.2: Cache-Control list syntax, section 4.2.1 for duplicates."""
    assert parse_cache_control(values) == expected


@given(st.lists(st.binary(max_size=60), max_size=4))
def test_parse_cache_control_never_raises(values: List[bytes]) -> None:
    """RFC 9111 section 5.2: arbitrary field bytes parse to lower-case names without raising."""
    parsed = parse_cache_control(values)
    assert all(name == name.lower() and name for name in parsed)


# --- HTTP-date (RFC 9110 section 5.6.7) --------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (DATE, T0),
        (b"Sunday, 06-Nov-94 08:49:37 GMT", T0),
        (b"Sun Nov  6 08:49:37 1994", T0),
        (b"0", None),
        (b"-1", None),
        (b"", None),
        (b"Sun, 06 Nov 1994 25:49:37 GMT", None),
        (b"Sun, 31 Feb 1994 08:49:37 GMT", None),
        (b"\xff\xfe garbage", None),
        (None, None),
    ],
)
def test_parse_http_date(value: Optional[bytes], expected: Optional[float]) -> None:
    """RFC 9110 section 5.6.7 (used by RFC 9111 section 4.2.1): three formats, invalid is None."""
    assert parse_http_date(value) == expected


@given(st.binary(max_size=60))
def test_parse_http_date_never_raises(value: bytes) -> None:
    """RFC 9111 section 5.3: invalid dates (anything) yield None, never an exception."""
    result = parse_http_date(value)
    assert result is None or isinstance(result, float)


# --- freshness lifetime (RFC 9111 section 4.2.1) -----------------------------------------------

LIFETIME_CASES: List[Tuple[str, Headers, float]] = [
    ("4.2.1 max-age", [(b"cache-control", b"max-age=60")], 60.0),
    ("4.2.1 s-maxage over max-age", [(b"cache-control", b"max-age=60, s-maxage=5")], 5.0),
    (
        "4.2.1 max-age over Expires",
        [(b"cache-control", b"max-age=7"), (b"date", DATE), (b"expires", DATE_PLUS_100)],
        7.0,
    ),
    ("4.2.1 Expires minus Date", [(b"date", DATE), (b"expires", DATE_PLUS_100)], 100.0),
    ("4.2.1 Expires minus response_time without Date", [(b"expires", DATE_PLUS_100)], 90.0),
    ("4.2.1 Expires in the past", [(b"date", DATE_PLUS_100), (b"expires", DATE)], 0.0),
    ("5.3 invalid Expires is stale", [(b"date", DATE), (b"expires", b"0")], 0.0),
    (
        "4.2.1 conflicting Expires lines are stale",
        [(b"date", DATE), (b"expires", DATE_PLUS_100), (b"expires", DATE)],
        0.0,
    ),
    (
        "4.2.1 identical Expires lines are fine",
        [(b"date", DATE), (b"expires", DATE_PLUS_100), (b"expires", DATE_PLUS_100)],
        100.0,
    ),
    ("4.2.1 conflicting max-age is stale", [(b"cache-control", b"max-age=5, max-age=9")], 0.0),
    ("4.2.1 conflicting s-maxage is stale", [(b"cache-control", b"s-maxage=5, s-maxage=6")], 0.0),
    (
        "4.2.1 identical duplicate max-age",
        [(b"cache-control", b"max-age=5"), (b"cache-control", b"max-age=5")],
        5.0,
    ),
    ("4.2.1 non-integer max-age is stale", [(b"cache-control", b"max-age=1.5")], 0.0),
    ("4.2.1 max-age without argument is stale", [(b"cache-control", b"max-age")], 0.0),
    ("4.2.1 quoted max-age", [(b"cache-control", b'max-age="30"')], 30.0),
    (
        "1.2.2 huge delta-seconds capped",
        [(b"cache-control", b"max-age=" + b"9" * 5000)],
        float(MAX_DELTA_SECONDS),
    ),
    ("4.2.1 no explicit freshness", [(b"cache-control", b"public")], 0.0),
]


@pytest.mark.parametrize(
    ("headers", "expected"), [c[1:] for c in LIFETIME_CASES], ids=[c[0] for c in LIFETIME_CASES]
)
def test_freshness_lifetime(headers: Headers, expected: float) -> None:
    """RFC 9111 section 4.2.1: explicit freshness lifetime of a shared cache."""
    assert freshness_lifetime(headers, response_time=T0 + 10) == expected


header_names = st.sampled_from(
    [b"cache-control", b"expires", b"date", b"age", b"vary", b"set-cookie", b"authorization"]
)
header_lists = st.lists(st.tuples(header_names, st.binary(max_size=40)), max_size=6)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)


@given(header_lists, times)
def test_freshness_lifetime_never_negative(headers: Headers, response_time: float) -> None:
    """RFC 9111 section 4.2.1: the freshness lifetime is a non-negative number of seconds."""
    assert freshness_lifetime(headers, response_time) >= 0


# --- corrected initial age (RFC 9111 section 4.2.3) --------------------------------------------

AGE_CASES: List[Tuple[str, Headers, float, float, float]] = [
    ("4.2.3 nothing: response delay", [], T0, T0 + 2, 2.0),
    ("4.2.3 Age plus response delay", [(b"age", b"30")], T0, T0 + 2, 32.0),
    ("4.2.3 apparent age from Date", [(b"date", DATE)], T0 + 48, T0 + 50, 50.0),
    (
        "4.2.3 larger of apparent and corrected",
        [(b"date", DATE), (b"age", b"100")],
        T0,
        T0 + 50,
        150.0,
    ),
    ("4.2.3 Date in the future: apparent 0", [(b"date", DATE_PLUS_100)], T0, T0 + 1, 1.0),
    ("4.2.3 invalid Age counts as 0", [(b"age", b"-5")], T0, T0 + 1, 1.0),
    ("4.2.3 clock going back: no negative delay", [], T0 + 5, T0, 0.0),
]


@pytest.mark.parametrize(
    ("headers", "request_time", "response_time", "expected"),
    [c[1:] for c in AGE_CASES],
    ids=[c[0] for c in AGE_CASES],
)
def test_corrected_initial_age(
    headers: Headers, request_time: float, response_time: float, expected: float
) -> None:
    """RFC 9111 section 4.2.3: corrected_initial_age = max(apparent_age, corrected_age_value)."""
    assert corrected_initial_age(headers, request_time, response_time) == expected


def test_current_age_adds_resident_time() -> None:
    """RFC 9111 section 4.2.3: current_age = corrected_initial_age + resident_time."""
    assert current_age(10.0, T0, T0 + 5) == 15.0
    assert current_age(10.0, T0, T0 - 5) == 10.0


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0.0, b"0"), (12.9, b"12"), (-3.0, b"0"), (1e12, b"2147483648")],
)
def test_format_age(age: float, expected: bytes) -> None:
    """RFC 9111 section 5.1: Age is whole non-negative seconds, capped per section 1.2.2."""
    assert format_age(age) == expected


# --- keys (RFC 9111 sections 2 and 4.1) --------------------------------------------------------


def test_primary_key_lower_cases_scheme_and_host_only() -> None:
    """RFC 9111 section 2: the key is the target URI; host is case-insensitive, path is not."""
    assert primary_key(b"HTTP", b"Example.COM:8080", b"/A?b=C") == b"http://example.com:8080/A?b=C"
    assert primary_key(b"http", b"a", b"/x") != primary_key(b"http", b"a", b"/X")


@pytest.mark.parametrize(
    ("names", "headers", "expected"),
    [
        ((), [(b"accept", b"x")], ()),
        ((b"accept",), [(b"accept", b"text/html")], (b"text/html",)),
        ((b"accept",), [], (None,)),
        ((b"accept",), [(b"accept", b"")], (b"",)),
        ((b"accept",), [(b"accept", b"a ,b"), (b"accept", b"c")], (b"a, b, c",)),
        ((b"accept",), [(b"accept", b"a,  b,c")], (b"a, b, c",)),
        ((b"a", b"b"), [(b"b", b"2"), (b"a", b"1")], (b"1", b"2")),
    ],
    ids=["none", "one", "missing", "empty", "joined lines", "comma spacing", "order of names"],
)
def test_vary_values(
    names: Tuple[bytes, ...], headers: Headers, expected: Tuple[Optional[bytes], ...]
) -> None:
    """RFC 9111 section 4.1: the secondary key normalises list whitespace and repeated lines."""
    assert vary_values(names, headers) == expected


def test_vary_values_missing_differs_from_empty() -> None:
    """RFC 9111 section 4.1: an absent header field only matches another absent one."""
    assert vary_values((b"accept",), []) != vary_values((b"accept",), [(b"accept", b"")])


# --- request_is_cacheable (RFC 9111 section 4) -------------------------------------------------


@pytest.mark.parametrize(
    ("method", "expected"),
    [(b"GET", True), (b"HEAD", True), (b"POST", False), (b"PUT", False), (b"get", False)],
)
def test_request_is_cacheable(method: bytes, expected: bool) -> None:
    """RFC 9111 section 4: only GET (and HEAD, answered from a stored GET) use the cache."""
    assert request_is_cacheable(method, []) is expected


# --- plan_store (RFC 9111 section 3) -----------------------------------------------------------

FRESH = (b"cache-control", b"max-age=60")
STORE_CASES: List[Tuple[str, bytes, Headers, int, Headers, bool]] = [
    ("3 GET 200 max-age stored", b"GET", [], 200, [FRESH], True),
    ("3 HEAD not stored", b"HEAD", [], 200, [FRESH], False),
    ("3 POST not stored", b"POST", [], 200, [FRESH], False),
    ("4.2.2 default-cacheable 404 with freshness", b"GET", [], 404, [FRESH], True),
    ("3 non-default status with explicit freshness", b"GET", [], 500, [FRESH], True),
    ("3 302 with Expires", b"GET", [], 302, [(b"date", DATE), (b"expires", DATE_PLUS_100)], True),
    ("4.2.1 200 without explicit freshness", b"GET", [], 200, [], False),
    ("4.2.1 public alone is no freshness", b"GET", [], 200, [(b"cache-control", b"public")], False),
    ("3 206 never", b"GET", [], 206, [FRESH], False),
    ("4.3.4 304 never stored as such", b"GET", [], 304, [FRESH], False),
    ("3 non-final 1xx", b"GET", [], 103, [FRESH], False),
    ("5.2.2.5 no-store", b"GET", [], 200, [(b"cache-control", b"no-store"), FRESH], False),
    ("5.2.1.5 request no-store", b"GET", [(b"cache-control", b"no-store")], 200, [FRESH], False),
    ("5.2.2.7 private", b"GET", [], 200, [(b"cache-control", b"private"), FRESH], False),
    (
        "5.2.2.7 qualified private",
        b"GET",
        [],
        200,
        [(b"cache-control", b'private="x"'), FRESH],
        False,
    ),
    ("5.2.2.4 no-cache", b"GET", [], 200, [(b"cache-control", b"no-cache"), FRESH], False),
    ("3 Set-Cookie not stored", b"GET", [], 200, [FRESH, (b"set-cookie", b"a=b")], False),
    (
        "3 Set-Cookie with public stored",
        b"GET",
        [],
        200,
        [(b"cache-control", b"public, max-age=60"), (b"set-cookie", b"a=b")],
        True,
    ),
    ("3.5 Authorization alone", b"GET", [(b"authorization", b"x")], 200, [FRESH], False),
    (
        "3.5 Authorization with public",
        b"GET",
        [(b"authorization", b"x")],
        200,
        [(b"cache-control", b"public, max-age=6")],
        True,
    ),
    (
        "3.5 Authorization with s-maxage",
        b"GET",
        [(b"authorization", b"x")],
        200,
        [(b"cache-control", b"s-maxage=6")],
        True,
    ),
    (
        "3.5 Authorization with must-revalidate",
        b"GET",
        [(b"authorization", b"x")],
        200,
        [(b"cache-control", b"must-revalidate, max-age=6")],
        True,
    ),
    ("4.1 Vary star", b"GET", [], 200, [FRESH, (b"vary", b"accept, *")], False),
    (
        "4.2.1 max-age=0 stale on arrival",
        b"GET",
        [],
        200,
        [(b"cache-control", b"max-age=0")],
        False,
    ),
    ("5.3 invalid Expires stale", b"GET", [], 200, [(b"date", DATE), (b"expires", b"-1")], False),
    (
        "4.2.1 conflicting max-age",
        b"GET",
        [],
        200,
        [(b"cache-control", b"max-age=1,max-age=2")],
        False,
    ),
]


@pytest.mark.parametrize(
    ("method", "request_headers", "status", "response_headers", "stored"),
    [c[1:] for c in STORE_CASES],
    ids=[c[0] for c in STORE_CASES],
)
def test_plan_store_rules(
    method: bytes, request_headers: Headers, status: int, response_headers: Headers, stored: bool
) -> None:
    """RFC 9111 section 3 (storing responses); the id names the deciding subsection."""
    plan = plan_store(method, request_headers, status, response_headers, T0, T0 + 1)
    assert (plan is not None) is stored


def test_plan_store_fields() -> None:
    """RFC 9111 sections 4.1, 4.2.1 and 4.2.3: the plan carries lifetime, age, Vary, time."""
    headers = [
        (b"cache-control", b"s-maxage=30, max-age=60"),
        (b"vary", b"Accept-Encoding, accept-encoding"),
        (b"vary", b"Accept-Language"),
        (b"age", b"4"),
        (b"date", DATE),
    ]
    plan = plan_store(b"GET", [], 200, headers, T0 + 1, T0 + 3)
    assert plan == StorePlan(
        freshness_lifetime=30.0,
        initial_age=6.0,
        vary=(b"accept-encoding", b"accept-language"),
        response_time=T0 + 3,
    )


methods = st.sampled_from([b"GET", b"HEAD", b"POST", b""])
statuses = st.integers(min_value=0, max_value=999)


@given(methods, header_lists, statuses, header_lists, times, times)
def test_plan_store_never_raises(
    method: bytes,
    request_headers: Headers,
    status: int,
    response_headers: Headers,
    request_time: float,
    response_time: float,
) -> None:
    """RFC 9111 section 3: any header lists give a plan or None, never an exception."""
    plan = plan_store(method, request_headers, status, response_headers, request_time, response_time)
    if plan is not None:
        assert plan.freshness_lifetime > 0
        assert plan.initial_age >= 0
        assert b"*" not in plan.vary


@given(header_lists, times, times)
def test_plan_lifetime_matches_freshness_lifetime(
    response_headers: Headers, request_time: float, response_time: float
) -> None:
    """RFC 9111 section 4.2.1: a stored plan's lifetime is the explicit freshness lifetime."""
    plan = plan_store(b"GET", [], 200, response_headers, request_time, response_time)
    if plan is not None:
        assert plan.freshness_lifetime == freshness_lifetime(response_headers, response_time)
