"""Tests for the pure RFC 9111 caching policy."""

from __future__ import annotations

import base64
import contextlib
from datetime import datetime, timezone
from typing import Any, Dict, List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st

from powerlb.cachepolicy import (
    FRESH as USE_FRESH,
)
from powerlb.cachepolicy import (
    INVALIDATE,
    MAX_DELTA_SECONDS,
    NO_BODY,
    NO_DIRECTIVES,
    REVALIDATE,
    SHAPING_FIELDS,
    STALE,
    UNSATISFIABLE,
    UPDATE,
    Answer,
    Rules,
    StorePlan,
    answer_head,
    answered_by_cache,
    byte_range,
    cached_answer,
    content_range,
    corrected_initial_age,
    covers,
    current_age,
    fetch_headers,
    format_age,
    freshness_lifetime,
    head_update,
    invalidation_keys,
    not_modified,
    own_targeted,
    parse_cache_control,
    parse_http_date,
    plan_store,
    primary_key,
    request_directives,
    request_is_cacheable,
    reuse,
    revalidation_headers,
    stale_on_error,
    targeted_directives,
    update_headers,
    url_key,
    vary_values,
)
from powerlb.cachepolicy import (
    STALE_WHILE_REVALIDATE as SWR,
)
from powerlb.headers import Headers, get_first
from powerlb.structured import StructuredError, Token, parse_dictionary

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
        (b"Sun, 06 Nov 1994 8:49:37 GMT", None),  # one-digit hour
        (b"Sun, 06 Nov 94 08:49:37 GMT", None),  # two-digit year in an IMF-fixdate
        (b"Sun, 06-Nov-1994 08:49:37 GMT", None),  # dashes in an IMF-fixdate
        (b"Sun, 06-Nov-94 08:49:37 GMT", None),  # RFC 850 form with a short day name
        (b"Sun,  06 Nov 1994 08:49:37 GMT", None),  # doubled space
        (b"Sun, 06 Nov 1994  08:49:37 GMT", None),
        (b"Sun 06 Nov 1994 08:49:37 GMT", None),  # missing comma
        (b"Sun, 06 Nov 1994 08:49:37 UTC", None),  # zone other than GMT
        (b"Sun, 06 Nov 1994 08:49:37 +0000", None),
        (b"Sun, 06 Nov 1994 08:49:37", None),  # no zone
        (b"Sun, 06 Nov 1994 08.49.37 GMT", None),  # periods in the time
        (b"Sun, 6 Nov 1994 08:49:37 GMT", None),  # one-digit day
        (b"sun, 06 nov 1994 08:49:37 GMT", None),  # names are case-sensitive
        (b" Sun, 06 Nov 1994 08:49:37 GMT", None),
        (b"Sun Nov 6 08:49:37 1994", None),  # asctime pads the day with a space
        (b"Sun Nov 06 08:49:37 1994", T0),
        (b"Sun, 06 Nov 1994 08:49:60 GMT", T0 + 22),  # a leap second counts as :59
    ],
)
def test_parse_http_date(value: Optional[bytes], expected: Optional[float]) -> None:
    """RFC 9110 section 5.6.7 (used by RFC 9111 section 4.2.1): three formats, invalid is None."""
    assert parse_http_date(value) == expected


@pytest.mark.parametrize(
    ("value", "now", "year"),
    [
        (b"Sunday, 06-Nov-94 08:49:37 GMT", T0, 1994),
        (b"Sunday, 06-Nov-94 08:49:37 GMT", None, 1994),
        (b"Monday, 06-Nov-30 08:49:37 GMT", None, 2030),
        (b"Monday, 06-Nov-30 08:49:37 GMT", T0, 2030),  # 36 years ahead of 1994: not more than 50
        (b"Monday, 06-Nov-50 08:49:37 GMT", T0, 1950),  # 2050 is 56 years ahead
        (b"Monday, 06-Nov-44 08:49:37 GMT", T0, 2044),
    ],
)
def test_rfc850_two_digit_year(value: bytes, now: Optional[float], year: int) -> None:
    """RFC 9110 section 5.6.7: a two-digit year more than 50 years in the future is in the past."""
    parsed = parse_http_date(value, now)
    assert parsed is not None
    assert datetime.fromtimestamp(parsed, timezone.utc).year == year


moments = st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 31)).map(
    lambda moment: moment.replace(microsecond=0, tzinfo=timezone.utc)
)
_DAYS = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
_LONG_DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def imf_fixdate(moment: datetime) -> bytes:
    day, month = _DAYS[moment.weekday()], _MONTHS[moment.month - 1]
    return f"{day}, {moment.day:02d} {month} {moment.year:04d} {moment:%H:%M:%S} GMT".encode()


@given(moments)
def test_http_date_forms_round_trip(moment: datetime) -> None:
    """RFC 9110 section 5.6.7: every moment written in each of the three forms reads back the same."""
    month = _MONTHS[moment.month - 1]
    asctime = f"{_DAYS[moment.weekday()]} {month} {moment.day:2d} {moment:%H:%M:%S} {moment.year:04d}"
    short_year = moment.year % 100
    rfc850 = (
        f"{_LONG_DAYS[moment.weekday()]}, {moment.day:02d}-{month}-{short_year:02d} {moment:%H:%M:%S} GMT"
    )
    assert parse_http_date(imf_fixdate(moment)) == moment.timestamp()
    assert parse_http_date(asctime.encode()) == moment.timestamp()
    assert parse_http_date(rfc850.encode(), moment.timestamp() + 86400 * 365 * 10) == moment.timestamp()


@given(moments, st.sampled_from([" GMT", ",", ":", " 0"]), st.sampled_from(["", " ", "  ", "-", ".", "0"]))
def test_imf_fixdate_with_anything_changed_is_invalid(moment: datetime, part: str, replacement: str) -> None:
    """RFC 9111 section 5.3: an Expires that is not exactly an HTTP-date is invalid (None)."""
    valid = imf_fixdate(moment).decode()
    changed = valid.replace(part, replacement, 1)
    if changed != valid:
        assert parse_http_date(changed.encode()) is None


@given(st.binary(max_size=60), st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False)))
def test_parse_http_date_never_raises(value: bytes, now: Optional[float]) -> None:
    """RFC 9111 section 5.3: invalid dates (anything) yield None, never an exception."""
    result = parse_http_date(value, now)
    assert result is None or isinstance(result, float)
    rfc850 = parse_http_date(b"Sunday, 06-Nov-94 08:49:37 GMT", now)
    assert rfc850 is None or isinstance(rfc850, float)


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
    (
        "4.2.2 heuristic: 10% of Date - Last-Modified",
        [(b"date", DATE_PLUS_100), (b"last-modified", DATE)],
        10.0,
    ),
    (
        "4.2.2 heuristic capped at a day",
        [(b"date", DATE_PLUS_100), (b"last-modified", b"Thu, 01 Jan 1970 00:00:00 GMT")],
        86400.0,
    ),
    ("4.2.2 no heuristic past an invalid Expires", [(b"expires", b"0"), (b"last-modified", DATE)], 0.0),
    (
        "RFC 9213 2.1 targeted field wins over Cache-Control",
        [(b"cache-control", b"max-age=5"), (b"cdn-cache-control", b"max-age=50")],
        50.0,
    ),
    (
        "RFC 9213 2.1 targeted field ignores Expires",
        [(b"cdn-cache-control", b"public"), (b"date", DATE), (b"expires", DATE_PLUS_100)],
        0.0,
    ),
    (
        "RFC 9213 2.1 empty targeted field falls back to Cache-Control",
        [(b"cache-control", b"max-age=5"), (b"cdn-cache-control", b"")],
        5.0,
    ),
    (
        "RFC 9213 2.1 string max-age: targeted field invalid",
        [(b"cache-control", b"max-age=5"), (b"cdn-cache-control", b'max-age="50"')],
        5.0,
    ),
    (
        "RFC 9213 2.1 decimal max-age: targeted field invalid",
        [(b"cache-control", b"max-age=5"), (b"cdn-cache-control", b"max-age=50.0")],
        5.0,
    ),
    (
        "RFC 9213 2.1 malformed member: targeted field invalid",
        [(b"cache-control", b"max-age=5"), (b"cdn-cache-control", b"max-age=50, Public")],
        5.0,
    ),
    (
        "RFC 9213 2.1 targeted lines joined, last duplicate wins",
        [(b"cdn-cache-control", b"max-age=50"), (b"cdn-cache-control", b"max-age=40")],
        40.0,
    ),
    (
        "5.3 Expires with a zone other than GMT is stale",
        [(b"date", DATE), (b"expires", b"Sun, 06 Nov 1994 08:51:17 UTC")],
        0.0,
    ),
    (
        "5.3 Expires with a two-digit year is stale",
        [(b"date", DATE), (b"expires", b"Sun, 06 Nov 94 08:51:17 GMT")],
        0.0,
    ),
    (
        "5.3 Expires in the RFC 850 form is valid",
        [(b"date", DATE), (b"expires", b"Sunday, 06-Nov-94 08:51:17 GMT")],
        100.0,
    ),
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
    ("5.1 Age list: the first value counts", [(b"age", b"7200, 0")], T0, T0 + 1, 7201.0),
    ("5.1 repeated Age lines: the first counts", [(b"age", b"30"), (b"age", b"0")], T0, T0 + 1, 31.0),
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


@given(
    st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=4),
    st.sampled_from(["", " ", "  "]),
)
def test_age_list_first_member_counts(ages: List[int], space: str) -> None:
    """RFC 9111 section 5.1: of an Age list on one line (or several lines), the first value counts."""
    line = ("," + space).join(str(age) for age in ages).encode()
    assert corrected_initial_age([(b"age", line)], T0, T0) == ages[0]
    several = [(b"age", str(age).encode()) for age in ages]
    assert corrected_initial_age(several, T0, T0) == ages[0]


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
        ((b"accept",), [(b"accept", b"B, a")], (b"B, a",)),
        ((b"accept-language",), [(b"accept-language", b"FR, en-US ; q=0.8")], (b"en-us;q=0.8, fr",)),
        (
            (b"accept-encoding",),
            [(b"accept-encoding", b"gzip"), (b"accept-encoding", b"br,GZIP")],
            (b"br, gzip",),
        ),
    ],
    ids=[
        "none",
        "one",
        "missing",
        "empty",
        "joined lines",
        "comma spacing",
        "order of names",
        "other fields keep case and order",
        "Accept-Language case, order, whitespace",
        "Accept-Encoding case, order, repetition",
    ],
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
    ("4.3.1 stale on arrival but ETag: stored", b"GET", [], 200, [(b"etag", b'"1"')], True),
    ("4.2.2 heuristic for default-cacheable 404", b"GET", [], 404, [(b"last-modified", DATE)], True),
    ("3 500 with only a validator", b"GET", [], 500, [(b"etag", b'"1"')], False),
    (
        "3 302 with public and a validator",
        b"GET",
        [],
        302,
        [(b"cache-control", b"public"), (b"etag", b"x")],
        True,
    ),
    (
        "5.2.2.4 no-cache with validator: stored, always revalidated",
        b"GET",
        [],
        200,
        [(b"cache-control", b"no-cache"), (b"etag", b'"1"')],
        True,
    ),
    (
        "RFC 9213 2.1 targeted no-store wins over Cache-Control",
        b"GET",
        [],
        200,
        [FRESH, (b"cdn-cache-control", b"no-store")],
        False,
    ),
    ("4.2.1 public alone is no freshness", b"GET", [], 200, [(b"cache-control", b"public")], False),
    ("3.3 206 without Content-Range", b"GET", [], 206, [FRESH], False),
    ("3.3 206 with one Content-Range", b"GET", [], 206, [FRESH, (b"content-range", b"bytes 0-9/100")], True),
    ("3.3 206 of unknown length", b"GET", [], 206, [FRESH, (b"content-range", b"bytes 0-9/*")], False),
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
        rules=Rules(must_revalidate=True),  # 5.2.2.10: s-maxage implies proxy-revalidate
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


request_header_lists = st.lists(
    st.tuples(
        st.sampled_from([b"cache-control", b"pragma", b"authorization", b"range"]),
        st.sampled_from([b"no-store", b"No-Store, max-age=1", b"no-cache", b""]) | st.binary(max_size=20),
    ),
    max_size=4,
)


@given(methods, request_header_lists, statuses, header_lists, times)
def test_plan_store_decides_alike_with_the_request_directives_parsed_already(
    method: bytes, request_headers: Headers, status: int, response_headers: Headers, now: float
) -> None:
    """RFC 9111 section 5.2.1.5: the request's ``no-store`` is read from its directives
    (:func:`request_directives`, ``Pragma`` included) as from its header lines."""
    directives = request_directives(request_headers)
    assert plan_store(method, request_headers, status, response_headers, now, now, request=directives) == (
        plan_store(method, request_headers, status, response_headers, now, now)
    )


@given(
    st.lists(
        st.sampled_from([b"no-store", b"max-age=60", b"Max-Age=60", b'private="a, b"', b"a=1, a=2"])
        | st.binary(max_size=300),
        min_size=1,
        max_size=6,
    )
)
def test_a_cache_control_value_seen_before_gives_the_same_directives(values: List[bytes]) -> None:
    """Parsed values are remembered (short ones): each gives what a first parse of it gives."""
    for value in values + values:
        assert request_directives([(b"cache-control", value)]) == parse_cache_control([value])
        lifetime = freshness_lifetime([(b"cache-control", value)], T0)
        assert lifetime == freshness_lifetime([(b"cache-control", value), (b"cache-control", b"")], T0)


@given(header_lists, times, times)
def test_plan_lifetime_matches_freshness_lifetime(
    response_headers: Headers, request_time: float, response_time: float
) -> None:
    """RFC 9111 section 4.2.1: a stored plan's lifetime is the explicit freshness lifetime."""
    plan = plan_store(b"GET", [], 200, response_headers, request_time, response_time)
    if plan is not None:
        assert plan.freshness_lifetime == freshness_lifetime(response_headers, response_time)


# --- request directives and reuse (RFC 9111 sections 4.2, 5.2.1; RFC 5861) --------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([(b"cache-control", b"max-age=0")], {b"max-age": b"0"}),
        ([(b"pragma", b"no-cache")], {b"no-cache": None}),
        ([(b"pragma", b"no-cache"), (b"cache-control", b"max-stale")], {b"max-stale": None}),
        ([(b"pragma", b"x")], {}),
    ],
    ids=["5.2.1 Cache-Control", "5.4 Pragma no-cache", "5.4 Pragma ignored with Cache-Control", "5.4 other"],
)
def test_request_directives(headers: Headers, expected: Dict[bytes, Optional[bytes]]) -> None:
    """RFC 9111 sections 5.2.1 and 5.4: request directives, Pragma only without Cache-Control."""
    assert request_directives(headers) == expected


MUST = Rules(must_revalidate=True)
REUSE_CASES: List[Tuple[str, float, float, Rules, Dict[bytes, Optional[bytes]], str]] = [
    ("4.2 fresh", 60, 10, Rules(), {}, USE_FRESH),
    ("4.2 stale at lifetime", 60, 60, Rules(), {}, REVALIDATE),
    ("5.2.2.4 response no-cache", 60, 1, Rules(no_cache=True), {}, REVALIDATE),
    ("5.2.1.4 request no-cache", 60, 1, Rules(), {b"no-cache": None}, REVALIDATE),
    ("5.2.1.1 request max-age exceeded", 60, 11, Rules(), {b"max-age": b"10"}, REVALIDATE),
    ("5.2.1.1 request max-age met", 60, 10, Rules(), {b"max-age": b"10"}, USE_FRESH),
    ("5.2.1.1 invalid request max-age ignored", 60, 10, Rules(), {b"max-age": b"x"}, USE_FRESH),
    ("5.2.1.3 min-fresh not met", 60, 55, Rules(), {b"min-fresh": b"10"}, REVALIDATE),
    ("5.2.1.3 min-fresh met", 60, 50, Rules(), {b"min-fresh": b"10"}, USE_FRESH),
    ("5.2.1.2 max-stale without value", 60, 1000, Rules(), {b"max-stale": None}, STALE),
    ("5.2.1.2 max-stale within", 60, 70, Rules(), {b"max-stale": b"10"}, STALE),
    ("5.2.1.2 max-stale exceeded", 60, 71, Rules(), {b"max-stale": b"10"}, REVALIDATE),
    ("5.2.2.2 must-revalidate forbids max-stale", 60, 61, MUST, {b"max-stale": None}, REVALIDATE),
    ("RFC 5861 3 stale-while-revalidate window", 60, 65, Rules(stale_while_revalidate=10), {}, SWR),
    ("RFC 5861 3 past the window", 60, 75, Rules(stale_while_revalidate=10), {}, REVALIDATE),
    (
        "4.2.4 must-revalidate forbids stale-while-revalidate",
        60,
        65,
        Rules(must_revalidate=True, stale_while_revalidate=10),
        {},
        REVALIDATE,
    ),
]


@pytest.mark.parametrize(
    ("lifetime", "age", "rules", "request_cc", "expected"),
    [c[1:] for c in REUSE_CASES],
    ids=[c[0] for c in REUSE_CASES],
)
def test_reuse(
    lifetime: float, age: float, rules: Rules, request_cc: Dict[bytes, Optional[bytes]], expected: str
) -> None:
    """RFC 9111 sections 4.2, 4.2.4 and 5.2 and RFC 5861 section 3: may a stored response be used?"""
    assert reuse(lifetime, age, rules, request_cc) == expected


@pytest.mark.parametrize(
    ("age", "rules", "request_cc", "grace", "expected"),
    [
        (65, Rules(stale_if_error=10), {}, 0, True),
        (75, Rules(stale_if_error=10), {}, 0, False),
        (75, Rules(), {}, 20, True),
        (75, Rules(), {b"stale-if-error": b"30"}, 0, True),
        (61, Rules(stale_if_error=10, must_revalidate=True), {}, 99, False),
        (61, Rules(stale_if_error=10, no_cache=True), {}, 99, False),
        (61, Rules(), {}, 0, False),
    ],
    ids=[
        "RFC 5861 4 response stale-if-error",
        "RFC 5861 4 past the window",
        "grace acts as stale-if-error",
        "RFC 5861 4 request stale-if-error",
        "RFC 9111 4.2.4 must-revalidate forbids it",
        "RFC 9111 4.2.4 no-cache forbids it",
        "nothing allows it",
    ],
)
def test_stale_on_error(
    age: float, rules: Rules, request_cc: Dict[bytes, Optional[bytes]], grace: float, expected: bool
) -> None:
    """RFC 5861 section 4 (stale-if-error) within RFC 9111 section 4.2.4, lifetime 60 s."""
    assert stale_on_error(60, age, rules, request_cc, grace) is expected


@given(
    st.floats(0, 1e6),
    st.floats(0, 1e6),
    st.builds(Rules, st.booleans(), st.booleans(), st.floats(0, 1e4), st.floats(0, 1e4)),
)
def test_reuse_never_serves_what_must_be_revalidated(lifetime: float, age: float, rules: Rules) -> None:
    """RFC 9111 sections 4.2.4 and 5.2.2: fresh means age < lifetime; no stale use past must-revalidate."""
    use = reuse(lifetime, age, rules, {})
    if use == USE_FRESH:
        assert age < lifetime and not rules.no_cache
    if use in (STALE, SWR):
        assert age >= lifetime and not rules.must_revalidate and not rules.no_cache
    assert reuse(lifetime, age, rules, {b"no-cache": None}) == REVALIDATE


# --- validation (RFC 9111 section 4.3, RFC 9110 section 13) ------------------------------------


def test_revalidation_headers_replace_client_preconditions() -> None:
    """RFC 9111 section 4.3.1: the cache's validators replace the client's preconditions."""
    request_headers = [(b"accept", b"x"), (b"if-none-match", b'"client"'), (b"range", b"bytes=0-1")]
    stored = [(b"etag", b'"s"'), (b"last-modified", DATE)]
    assert revalidation_headers(request_headers, stored) == [
        (b"accept", b"x"),
        (b"if-none-match", b'"s"'),
        (b"if-modified-since", DATE),
    ]
    assert revalidation_headers([], [(b"etag", b'W/"w"')]) == [(b"if-none-match", b'W/"w"')]


def test_update_headers_from_304() -> None:
    """RFC 9111 section 3.2: a 304 replaces stored fields, except framing, Age and hop-by-hop."""
    stored = [(b"content-length", b"5"), (b"cache-control", b"max-age=1"), (b"x-a", b"1"), (b"x-a", b"2")]
    new = [
        (b"cache-control", b"max-age=60"),
        (b"content-length", b"0"),
        (b"age", b"3"),
        (b"connection", b"close"),
        (b"x-a", b"3"),
    ]
    assert update_headers(stored, new) == [
        (b"content-length", b"5"),
        (b"cache-control", b"max-age=60"),
        (b"x-a", b"3"),
    ]


FETCH_CASES: List[Tuple[str, Headers, Headers]] = [
    (
        "RFC 9111 4.3.2 If-None-Match answered by the cache",
        [(b"if-none-match", b'"a"'), (b"x", b"1")],
        [(b"x", b"1")],
    ),
    ("RFC 9111 4.3.2 If-Modified-Since answered by the cache", [(b"if-modified-since", DATE)], []),
    (
        "RFC 9110 14.2 Range and If-Range answered by the cache",
        [(b"range", b"bytes=0-1"), (b"if-range", DATE)],
        [],
    ),
    ("RFC 9110 13.1.1 If-Match left to the origin", [(b"if-match", b'"a"')], [(b"if-match", b'"a"')]),
    (
        "RFC 9111 5.2.1.5 no-store: nothing stored, sent as is",
        [(b"cache-control", b"no-store"), (b"range", b"bytes=0-1")],
        [(b"cache-control", b"no-store"), (b"range", b"bytes=0-1")],
    ),
    ("RFC 9111 3 plain request unchanged", [(b"accept", b"x")], [(b"accept", b"x")]),
]


@pytest.mark.parametrize(
    ("request_headers", "expected"), [c[1:] for c in FETCH_CASES], ids=[c[0] for c in FETCH_CASES]
)
def test_fetch_headers(request_headers: Headers, expected: Headers) -> None:
    """RFC 9111 sections 3 and 4.3.2: a GET to store is sent without what the cache answers itself."""
    assert fetch_headers(request_headers) == expected
    answered = answered_by_cache(request_headers)
    assert answered is (expected != request_headers)
    assert fetch_headers(request_headers, answered) == expected
    if not answered:  # nothing left out: the request's own headers, not a copy
        assert fetch_headers(request_headers) is request_headers


HEAD_200 = [(b"etag", b'"v1"'), (b"last-modified", DATE), (b"content-length", b"10")]
HEAD_UPDATE_CASES: List[Tuple[str, int, Headers, int, Optional[str]]] = [
    ("RFC 9111 4.3.5 validators and length match: update", 200, HEAD_200, 200, UPDATE),
    ("RFC 9111 4.3.5 ETag alone matches: update", 200, [(b"etag", b'"v1"')], 200, UPDATE),
    ("RFC 9111 4.3.5 Last-Modified alone matches: update", 200, [(b"last-modified", DATE)], 200, UPDATE),
    ("RFC 9111 4.3.5 other ETag: invalidate", 200, [(b"etag", b'"v2"')], 200, INVALIDATE),
    ("RFC 9111 4.3.5 weak ETag is another value: invalidate", 200, [(b"etag", b'W/"v1"')], 200, INVALIDATE),
    (
        "RFC 9111 4.3.5 other Last-Modified: invalidate",
        200,
        [(b"last-modified", DATE_PLUS_100)],
        200,
        INVALIDATE,
    ),
    (
        "RFC 9111 4.3.5 other Content-Length: invalidate",
        200,
        [(b"etag", b'"v1"'), (b"content-length", b"9")],
        200,
        INVALIDATE,
    ),
    ("RFC 9111 4.3.5 no validator to match: invalidate", 200, [(b"content-length", b"10")], 200, INVALIDATE),
    ("RFC 9111 4.3.5 stored response not a 200: invalidate", 200, HEAD_200, 404, INVALIDATE),
    ("RFC 9111 4.3.5 only a 200 counts", 404, [(b"etag", b'"v2"')], 200, None),
    ("RFC 9111 4.3.5 a 304 is not a HEAD update", 304, HEAD_200, 200, None),
]


@pytest.mark.parametrize(
    ("status", "head_headers", "stored_status", "expected"),
    [c[1:] for c in HEAD_UPDATE_CASES],
    ids=[c[0] for c in HEAD_UPDATE_CASES],
)
def test_head_update(status: int, head_headers: Headers, stored_status: int, expected: Optional[str]) -> None:
    """RFC 9111 section 4.3.5: a HEAD response updates or invalidates a stored 10-byte GET response."""
    assert head_update(status, head_headers, stored_status, ETAG, 10) == expected


@given(header_lists, header_lists)
def test_update_headers_is_idempotent(stored: Headers, new: Headers) -> None:
    """RFC 9111 section 3.2: applying the same 304 twice changes nothing more."""
    once = update_headers(stored, new)
    assert sorted(update_headers(once, new)) == sorted(once)


ETAG = [(b"etag", b'"v1"'), (b"last-modified", DATE)]
NOT_MODIFIED_CASES: List[Tuple[str, Headers, Headers, bool]] = [
    ("RFC 9110 13.1.2 If-None-Match matches", [(b"if-none-match", b'"v1"')], ETAG, True),
    ("RFC 9110 13.1.2 weak comparison", [(b"if-none-match", b'W/"v1"')], ETAG, True),
    ("RFC 9110 13.1.2 list", [(b"if-none-match", b'"a", "v1"')], ETAG, True),
    ("RFC 9110 13.1.2 star", [(b"if-none-match", b"*")], [], True),
    ("RFC 9110 13.1.2 no match", [(b"if-none-match", b'"v2"')], ETAG, False),
    (
        "RFC 9110 13.2.2 If-None-Match wins over If-Modified-Since",
        [(b"if-none-match", b'"v2"'), (b"if-modified-since", DATE_PLUS_100)],
        ETAG,
        False,
    ),
    ("RFC 9110 13.1.3 not modified since", [(b"if-modified-since", DATE_PLUS_100)], ETAG, True),
    (
        "RFC 9110 13.1.3 modified since",
        [(b"if-modified-since", DATE)],
        [(b"last-modified", DATE_PLUS_100)],
        False,
    ),
    ("RFC 9111 4.3.2 Date when no Last-Modified", [(b"if-modified-since", DATE)], [(b"date", DATE)], True),
    ("RFC 9110 13.1.3 invalid date ignored", [(b"if-modified-since", b"yesterday")], ETAG, False),
    ("no precondition", [], ETAG, False),
]


@pytest.mark.parametrize(
    ("request_headers", "stored", "expected"),
    [c[1:] for c in NOT_MODIFIED_CASES],
    ids=[c[0] for c in NOT_MODIFIED_CASES],
)
def test_not_modified(request_headers: Headers, stored: Headers, expected: bool) -> None:
    """RFC 9111 section 4.3.2: a cache answers a matching conditional GET with 304."""
    assert not_modified(request_headers, stored) is expected


# --- answers (RFC 9110 section 14 ranges, RFC 9111 section 5.1 Age) ----------------------------

RANGE_CASES: List[Tuple[str, Headers, Optional[Tuple[int, int]]]] = [
    ("14.1.2 first-last", [(b"range", b"bytes=2-5")], (2, 5)),
    ("14.1.2 open end", [(b"range", b"bytes=7-")], (7, 9)),
    ("14.1.2 last beyond length clipped", [(b"range", b"bytes=8-100")], (8, 9)),
    ("14.1.2 suffix", [(b"range", b"bytes=-3")], (7, 9)),
    ("14.1.2 suffix longer than body", [(b"range", b"bytes=-30")], (0, 9)),
    ("14.1.1 unsatisfiable start", [(b"range", b"bytes=10-")], UNSATISFIABLE),
    ("14.1.1 zero suffix", [(b"range", b"bytes=-0")], UNSATISFIABLE),
    ("14.2 several ranges: whole", [(b"range", b"bytes=0-1,3-4")], None),
    ("14.2 other unit: whole", [(b"range", b"items=0-1")], None),
    ("14.1.1 last before first: invalid, whole", [(b"range", b"bytes=5-2")], None),
    ("14.2 no Range", [], None),
    ("13.1.5 If-Range strong match", [(b"range", b"bytes=0-0"), (b"if-range", b'"v1"')], (0, 0)),
    ("13.1.5 If-Range mismatch: whole", [(b"range", b"bytes=0-0"), (b"if-range", b'"v2"')], None),
    ("13.1.5 If-Range date match", [(b"range", b"bytes=0-0"), (b"if-range", DATE)], (0, 0)),
]


@pytest.mark.parametrize(
    ("request_headers", "expected"), [c[1:] for c in RANGE_CASES], ids=[c[0] for c in RANGE_CASES]
)
def test_byte_range(request_headers: Headers, expected: Optional[Tuple[int, int]]) -> None:
    """RFC 9110 section 14: a single byte range of a 10-byte stored representation."""
    assert byte_range(request_headers, ETAG, 10) == expected


@given(st.binary(max_size=30), st.integers(0, 100))
def test_byte_range_is_within_the_body(value: bytes, length: int) -> None:
    """RFC 9110 section 14.1.2: any satisfiable range lies within the representation."""
    span = byte_range([(b"range", value)], [], length)
    if span is not None and span != UNSATISFIABLE:
        assert 0 <= span[0] <= span[1] < length


def test_cached_answer_full_with_age_and_without_own_targeted_field() -> None:
    """RFC 9111 section 5.1 (Age), RFC 9213 2.1 (a field for this cache alone is not forwarded,
    CDN-Cache-Control is), framing from the body."""
    cdn = (b"cdn-cache-control", b"max-age=5")
    stored = [(b"content-length", b"99"), cdn, (b"powerlb-cc", b"max-age=9"), (b"date", DATE)]
    strip = own_targeted([b"powerlb-cc", b"cdn-cache-control"])
    answer = cached_answer(b"GET", [], 200, b"OK", stored, b"hello", 12.7, strip)
    assert answer == Answer(
        200, b"OK", [cdn, (b"date", DATE), (b"age", b"12"), (b"content-length", b"5")], b"hello"
    )


def test_cached_answer_304_206_416() -> None:
    """RFC 9111 section 4.3.2 (304 from the cache) and RFC 9110 sections 14.4 and 15.5.17."""
    stored = [*ETAG, (b"content-type", b"text/plain")]
    not_mod = cached_answer(b"GET", [(b"if-none-match", b'"v1"')], 200, b"OK", stored, b"0123456789", 0)
    assert (not_mod.status, not_mod.body) == (304, b"")
    assert dict(not_mod.headers) == {b"etag": b'"v1"', b"last-modified": DATE, b"age": b"0"}
    part = cached_answer(b"GET", [(b"range", b"bytes=2-4")], 200, b"OK", stored, b"0123456789", 0)
    assert (part.status, part.body) == (206, b"234")
    assert (b"content-range", b"bytes 2-4/10") in part.headers
    assert (b"content-length", b"3") in part.headers
    bad = cached_answer(b"GET", [(b"range", b"bytes=50-")], 200, b"OK", stored, b"0123456789", 0)
    assert (bad.status, bad.body) == (416, b"")
    assert (b"content-range", b"bytes */10") in bad.headers
    # HEAD and non-200 stored responses ignore Range.
    assert (
        cached_answer(b"HEAD", [(b"range", b"bytes=2-4")], 200, b"OK", stored, b"0123456789", 0).status == 200
    )
    assert (
        cached_answer(b"GET", [(b"range", b"bytes=2-4")], 404, b"NF", stored, b"0123456789", 0).status == 404
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"bytes 0-9/100", (0, 9, 100)),
        (b"bytes 99-99/100", (99, 99, 100)),
        (b"bytes 0-99/100", (0, 99, 100)),
        (b"bytes 0-100/100", None),  # past the end
        (b"bytes 5-4/100", None),
        (b"bytes 0-9/*", None),  # unknown length
        (b"bytes */100", None),  # unsatisfied-range
        (b"items 0-9/100", None),
        (b"bytes 0-9/100, bytes 20-29/100", None),
    ],
)
def test_content_range(value: bytes, expected: Optional[Tuple[int, int, int]]) -> None:
    """RFC 9110 section 14.4: a single byte range of a known complete length."""
    assert content_range([(b"content-range", value)]) == expected


PARTIAL = [*ETAG, (b"content-range", b"bytes 10-19/100")]
COVER_CASES: List[Tuple[str, bytes, Headers, bool]] = [
    ("3.3 range within", b"GET", [(b"range", b"bytes=12-15")], True),
    ("3.3 the whole part", b"GET", [(b"range", b"bytes=10-19")], True),
    ("3.3 open range past the part", b"GET", [(b"range", b"bytes=15-")], False),
    ("3.3 range across the start", b"GET", [(b"range", b"bytes=5-12")], False),
    ("3.3 suffix range outside", b"GET", [(b"range", b"bytes=-5")], False),
    ("3.3 no Range: a complete response is asked", b"GET", [], False),
    ("3.3 HEAD", b"HEAD", [(b"range", b"bytes=12-15")], False),
    ("3.3 conditional", b"GET", [(b"range", b"bytes=12-15"), (b"if-none-match", b'"v1"')], False),
    ("13.1.5 If-Range matching", b"GET", [(b"range", b"bytes=12-15"), (b"if-range", b'"v1"')], True),
    ("13.1.5 If-Range not matching", b"GET", [(b"range", b"bytes=12-15"), (b"if-range", b'"v2"')], False),
]


@pytest.mark.parametrize(
    ("method", "request_headers", "expected"), [c[1:] for c in COVER_CASES], ids=[c[0] for c in COVER_CASES]
)
def test_stored_206_covers_only_ranges_within(
    method: bytes, request_headers: Headers, expected: bool
) -> None:
    """RFC 9111 section 3.3: an incomplete response answers only a range wholly within it."""
    assert covers(method, request_headers, 206, PARTIAL) is expected
    assert covers(method, request_headers, 200, ETAG)


def test_cached_answer_from_a_stored_206() -> None:
    """RFC 9111 section 3.3, RFC 9110 section 14.4: the range asked, cut from the stored part."""
    answer = cached_answer(b"GET", [(b"range", b"bytes=12-15")], 206, b"Partial", PARTIAL, b"abcdefghij", 3)
    assert (answer.status, answer.body) == (206, b"cdef")
    assert [v for k, v in answer.headers if k in (b"content-range", b"content-length")] == [
        b"bytes 12-15/100",
        b"4",
    ]


ANSWER_HEAD_CASES: List[Tuple[str, Headers, Optional[int], int, Optional[Tuple[int, int]], List[bytes]]] = [
    ("RFC 9111 4.3.2 304 without knowing the length", [(b"if-none-match", b'"v1"')], None, 304, NO_BODY, []),
    ("RFC 9110 14.2 Range with an unknown length: whole", [(b"range", b"bytes=2-4")], None, 200, None, []),
    ("RFC 9110 14.4 Range with a known length: 206", [(b"range", b"bytes=2-4")], 10, 206, (2, 4), [b"3"]),
    ("RFC 9110 15.5.17 unsatisfiable: 416", [(b"range", b"bytes=10-")], 10, 416, NO_BODY, [b"0"]),
    ("RFC 9110 8.6 whole, known length", [], 10, 200, None, [b"10"]),
]


@pytest.mark.parametrize(
    ("request_headers", "length", "status", "span", "content_length"),
    [c[1:] for c in ANSWER_HEAD_CASES],
    ids=[c[0] for c in ANSWER_HEAD_CASES],
)
def test_answer_head(
    request_headers: Headers,
    length: Optional[int],
    status: int,
    span: Optional[Tuple[int, int]],
    content_length: List[bytes],
) -> None:
    """RFC 9111 4.3.2, RFC 9110 14: the head of an answer from a response whose length may be unknown."""
    answer, got = answer_head(b"GET", request_headers, 200, b"OK", ETAG, length, 0)
    assert (answer.status, got, answer.body) == (status, span, b"")
    assert [v for k, v in answer.headers if k == b"content-length"] == content_length


# --- invalidation and purge keys (RFC 9111 section 4.4) ----------------------------------------

INVALIDATION_CASES: List[Tuple[str, bytes, int, Headers, List[bytes]]] = [
    ("4.4 POST invalidates the target", b"POST", 201, [], [b"http://h/a"]),
    ("4.4 unknown method is unsafe", b"FROB", 200, [], [b"http://h/a"]),
    ("4.4 safe method invalidates nothing", b"GET", 200, [], []),
    ("4.4 error response invalidates nothing", b"DELETE", 500, [], []),
    (
        "4.4 same-origin Location and Content-Location",
        b"PUT",
        200,
        [(b"location", b"/b?x=1"), (b"content-location", b"http://H/c")],
        [b"http://h/a", b"http://h/b?x=1", b"http://h/c"],
    ),
    ("4.4 other origin Location ignored", b"POST", 303, [(b"location", b"http://other/b")], [b"http://h/a"]),
    ("4.4 other scheme Location ignored", b"POST", 303, [(b"location", b"https://h/b")], [b"http://h/a"]),
]


@pytest.mark.parametrize(
    ("method", "status", "headers", "expected"),
    [c[1:] for c in INVALIDATION_CASES],
    ids=[c[0] for c in INVALIDATION_CASES],
)
def test_invalidation_keys(method: bytes, status: int, headers: Headers, expected: List[bytes]) -> None:
    """RFC 9111 section 4.4: what a response to an unsafe request invalidates."""
    assert invalidation_keys(method, status, b"http", b"h", b"/a", headers) == expected


def test_url_key() -> None:
    """RFC 9111 section 2: a purge URL maps to the same key as a request for it."""
    assert url_key(b"http://Example.com:8080/A?b=1") == primary_key(b"http", b"example.com:8080", b"/A?b=1")
    assert url_key(b"https://h") == b"https://h"
    assert url_key(b"/relative") is None
    assert url_key(b"ftp://h/x") is None


language_members = st.lists(
    st.sampled_from(["en", "en-US", "fr", "de;q=0.5", "*;q=0.1", "gzip", "br", "identity;q=0"]),
    min_size=1,
    max_size=5,
)


@given(
    st.sampled_from([b"accept-language", b"accept-encoding"]),
    language_members.flatmap(lambda members: st.tuples(st.just(members), st.permutations(members))),
    st.sampled_from(["", " ", "\t", "  "]),
)
def test_vary_values_ignore_case_order_and_whitespace(
    name: bytes, members: Tuple[List[str], List[str]], space: str
) -> None:
    """RFC 9111 section 4.1 (normalising): Accept-Language / Accept-Encoding variants match regardless
    of case, order and whitespace."""
    plain, shuffled = members
    written = ("," + space).join(m.upper().replace(";", space + ";" + space) for m in shuffled)
    expected = vary_values((name,), [(name, ", ".join(plain).encode())])
    assert vary_values((name,), [(name, written.encode())]) == expected


# --- RFC 8941 dictionaries and targeted fields (RFC 9213) --------------------------------------

DICTIONARY_CASES: List[Tuple[str, bytes, Dict[str, Any]]] = [
    ("4.2.2 empty", b"", {}),
    ("4.2.2 boolean member", b"no-store", {"no-store": (True, {})}),
    ("4.2.2 integer and boolean", b"max-age=60, public", {"max-age": (60, {}), "public": (True, {})}),
    ("4.2.2 whitespace", b"  a=1 ,\tb  ", {"a": (1, {}), "b": (True, {})}),
    ("4.2.2 last duplicate wins", b"a=1, a=2", {"a": (2, {})}),
    ("4.2.4 negative integer", b"a=-5", {"a": (-5, {})}),
    ("4.2.4 decimal", b"a=1.25", {"a": (1.25, {})}),
    ("4.2.5 string with escapes", b'a="x\\"y\\\\"', {"a": ('x"y\\', {})}),
    ("4.2.6 token", b"a=foo/bar:1", {"a": (Token("foo/bar:1"), {})}),
    ("4.2.7 byte sequence", b"a=:aGk=:", {"a": (b"hi", {})}),
    ("4.2.8 booleans", b"a=?0, b=?1", {"a": (False, {}), "b": (True, {})}),
    ("4.2.1.2 inner list", b"a=(1 x);q=2", {"a": ([(1, {}), (Token("x"), {})], {"q": 2})}),
    ("4.2.3 parameters", b"a;x=1;y, b=2;z", {"a": (True, {"x": 1, "y": True}), "b": (2, {"z": True})}),
]

MALFORMED_DICTIONARIES = [
    b"A=1",  # keys are lower-case
    b"a=1,",  # trailing comma
    b"a=1,,b",  # empty member
    b"a=1 b=2",  # missing comma
    b"a=",  # missing value
    b"a=1.",  # decimal without a fraction
    b"a=1.2345",  # too many fractional digits
    b"a=1234567890123456",  # integer over 15 digits
    b'a="x',  # unterminated string
    b'a="\\x"',  # bad escape
    b"a=(1 2",  # unterminated inner list
    b"a=?2",  # not a Boolean
    b"a=:@@:",  # not base64
    b"\ta=1",  # leading tab
    b"a=\xff",  # not ASCII
]


@pytest.mark.parametrize(
    ("data", "expected"), [c[1:] for c in DICTIONARY_CASES], ids=[c[0] for c in DICTIONARY_CASES]
)
def test_parse_dictionary(data: bytes, expected: Dict[str, Any]) -> None:
    """RFC 8941 section 4.2.2 (and the items in it): the section names the rule."""
    parsed = parse_dictionary(data)
    assert parsed == expected
    assert [type(v) for v, _ in parsed.values()] == [type(v) for v, _ in expected.values()]


@pytest.mark.parametrize("data", MALFORMED_DICTIONARIES)
def test_parse_dictionary_rejects(data: bytes) -> None:
    """RFC 8941 section 4.2: any departure from the grammar fails the whole field."""
    with pytest.raises(StructuredError):
        parse_dictionary(data)


def serialize_bare(value: Any) -> str:
    """RFC 8941 section 4.1.3.1: a bare item (the test's own serializer, to round-trip the parser)."""
    if isinstance(value, bool):
        return "?1" if value else "?0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") + (
            "" if f"{value:.3f}".rstrip("0")[-1] != "." else ".0"
        )
    if isinstance(value, Token):
        return str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return ":" + base64.b64encode(value).decode() + ":"


def serialize_params(params: Dict[str, Any]) -> str:
    return "".join(f";{k}" if v is True else f";{k}={serialize_bare(v)}" for k, v in params.items())


def serialize_dictionary(members: Dict[str, Any]) -> bytes:
    """RFC 8941 section 4.1.2."""
    out = []
    for key, (value, params) in members.items():
        if value is True:
            out.append(key + serialize_params(params))
        elif isinstance(value, list):
            inner = " ".join(serialize_bare(v) + serialize_params(p) for v, p in value)
            out.append(f"{key}=({inner}){serialize_params(params)}")
        else:
            out.append(f"{key}={serialize_bare(value)}{serialize_params(params)}")
    return ", ".join(out).encode()


keys = st.from_regex(r"[a-z*][a-z0-9_\-.*]{0,6}", fullmatch=True)
bare_items = st.one_of(
    st.integers(min_value=-(10**15) + 1, max_value=10**15 - 1),
    st.integers(min_value=-(10**12) + 1, max_value=10**12 - 1).flatmap(
        lambda whole: st.integers(0, 999).map(
            lambda milli: round(whole + (milli / 1000 if whole >= 0 else -milli / 1000), 3)
        )
    ),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=10),
    st.from_regex(r"[A-Za-z*][A-Za-z0-9!#$%&'*+\-.^_`|~:/]{0,8}", fullmatch=True).map(Token),
    st.binary(max_size=10),
    st.booleans(),
)
parameters = st.dictionaries(keys, bare_items, max_size=2)
items = st.tuples(bare_items, parameters)
members = st.one_of(items, st.tuples(st.lists(items, max_size=3), parameters))


@given(st.dictionaries(keys, members, max_size=5))
def test_dictionary_round_trip(dictionary: Dict[str, Any]) -> None:
    """RFC 8941 sections 4.1.2 and 4.2.2: what is serialized parses back to the same members."""
    parsed = parse_dictionary(serialize_dictionary(dictionary))
    assert parsed == dictionary
    assert [type(v) for v, _ in parsed.values()] == [type(v) for v, _ in dictionary.values()]


@given(st.binary(max_size=60))
def test_parse_dictionary_fails_only_with_structured_error(data: bytes) -> None:
    """RFC 8941 section 4.2: anything parses or fails cleanly."""
    with contextlib.suppress(StructuredError):
        parse_dictionary(data)


TARGETED_CASES: List[Tuple[str, bytes, Optional[Dict[bytes, Optional[bytes]]]]] = [
    (
        "integer and booleans",
        b"max-age=60, no-store, public",
        {b"max-age": b"60", b"no-store": None, b"public": None},
    ),
    ("false boolean is absent", b"no-store=?0, max-age=1", {b"max-age": b"1"}),
    ("qualified private", b'private="set-cookie"', {b"private": None}),
    (
        "unknown directives of any type",
        b'x=1.5, y="z", max-age=3',
        {b"x": None, b"y": None, b"max-age": b"3"},
    ),
    ("parameters ignored", b"s-maxage=3;x=1", {b"s-maxage": b"3"}),
    ("string max-age", b'max-age="60"', None),
    ("decimal max-age", b"max-age=60.0", None),
    ("negative max-age", b"max-age=-1", None),
    ("boolean max-age", b"max-age=?1", None),
    ("integer no-store", b"no-store=1", None),
    ("token public", b"public=yes", None),
    ("upper-case key", b"Max-Age=60", None),
    ("Cache-Control syntax", b"max-age=60,", None),
    ("empty", b"", None),
]


@pytest.mark.parametrize(
    ("value", "expected"), [c[1:] for c in TARGETED_CASES], ids=[c[0] for c in TARGETED_CASES]
)
def test_targeted_directives(value: bytes, expected: Optional[Dict[bytes, Optional[bytes]]]) -> None:
    """RFC 9213 section 2.1: a Dictionary; a directive of the wrong type makes the field invalid (None)."""
    assert targeted_directives([value]) == expected


def test_target_list_first_valid_field_wins() -> None:
    """RFC 9213 section 2.1: a cache's target list is tried in order; an invalid field is skipped."""
    headers = [
        (b"cache-control", b"max-age=1"),
        (b"cdn-cache-control", b"max-age=2"),
        (b"powerlb-cc", b"max-age=3"),
    ]
    targets = (b"powerlb-cc", b"cdn-cache-control")
    assert freshness_lifetime(headers, T0, targeted=targets) == 3.0
    invalid_own = [(k, b'max-age="3"' if k == b"powerlb-cc" else v) for k, v in headers]
    assert freshness_lifetime(invalid_own, T0, targeted=targets) == 2.0
    assert freshness_lifetime(headers, T0, targeted=()) == 1.0
    assert own_targeted(targets) == {b"powerlb-cc"}


def test_post_response_stored_for_get_only_with_freshness_and_own_content_location() -> None:
    """RFC 9111 section 4, RFC 9110 section 9.3.3: a POST response can answer a later GET."""
    key = primary_key(b"http", b"h", b"/form")
    fresh = (b"cache-control", b"max-age=60")
    cases = [
        ([fresh, (b"content-location", b"/form")], True),
        ([fresh, (b"content-location", b"http://h/form")], True),
        ([(b"date", DATE), (b"expires", DATE_PLUS_100), (b"content-location", b"/form")], True),
        ([fresh, (b"content-location", b"/other")], False),
        ([fresh, (b"content-location", b"http://elsewhere/form")], False),
        ([fresh], False),
        ([(b"cache-control", b"public"), (b"content-location", b"/form")], False),
        ([(b"last-modified", DATE), (b"content-location", b"/form")], False),
    ]
    for headers, stored in cases:
        assert (plan_store(b"POST", [], 200, headers, T0, T0, key=key) is not None) is stored, headers


@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(SHAPING_FIELDS | {b"host", b"accept", b"authorization", b"x-a"})),
            st.sampled_from([b"", b"no-cache", b"max-age=0", b"bytes=0-1", b'"e"', b"only-if-cached"]),
        ),
        max_size=6,
    )
)
def test_a_request_without_shaping_fields_has_no_directives_conditionals_or_range(headers: Headers) -> None:
    """What a request's path skips when it has none of SHAPING_FIELDS (ClientRequest.shaped)."""
    if any(name in SHAPING_FIELDS for name, _ in headers):
        return
    assert request_directives(headers) == NO_DIRECTIVES == {}
    assert not answered_by_cache(headers)
    assert get_first(headers, b"range") is None
    assert fetch_headers(headers) is headers
