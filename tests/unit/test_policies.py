"""Tests for powerlb.policies: rewriting, header rules, redirects, access lists, the client
address, rate limits, request ids and cache keys."""

from __future__ import annotations

import ipaddress
import re
from typing import List, Optional, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from powerlb.policies import (
    FORBIDDEN_REASON,
    RATE_LIMITED_REASON,
    Acl,
    HeaderRules,
    RateLimit,
    RateLimiter,
    Redirect,
    Refusal,
    TokenBucket,
    admit,
    apply_header_rules,
    cache_key,
    check_template,
    client_address,
    parse_rate,
    redirect_for,
    request_id,
    retry_after,
    rewrite_path,
    split_host,
)
from powerlb.routing import Route


def _nets(*texts: str) -> tuple:
    return tuple(ipaddress.ip_network(text) for text in texts)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        (None, (b"", b"")),
        (b"Example.COM", (b"example.com", b"")),
        (b"example.com:8080", (b"example.com", b"8080")),
        (b"example.com.:80", (b"example.com", b"80")),
        (b"[::1]:8080", (b"[::1]", b"8080")),
        (b"[::1]", (b"[::1]", b"")),
        (b"::1", (b"::1", b"")),
    ],
)
def test_split_host(host: Optional[bytes], expected: Tuple[bytes, bytes]) -> None:
    assert split_host(host) == expected


_LABELS = st.from_regex(rb"[A-Za-z0-9-]{1,10}(\.[A-Za-z0-9-]{1,10}){0,3}", fullmatch=True)


@given(name=_LABELS, port=st.none() | st.integers(0, 65535).map(lambda n: str(n).encode()))
def test_split_host_properties(name: bytes, port: Optional[bytes]) -> None:
    host = name if port is None else name + b":" + port
    assert split_host(host) == (name.lower(), port or b"")
    assert split_host(b"[::1]" + (b"" if port is None else b":" + port)) == (b"[::1]", port or b"")


_PATH = st.lists(st.sampled_from([b"api", b"v1", b"x", b""]), max_size=4).map(
    lambda parts: b"/" + b"/".join(parts)
)


@given(
    strip=st.none() | _PATH,
    add=st.none() | _PATH,
    path=_PATH,
    query=st.sampled_from([b"", b"?a=1", b"?"]),
)
def test_rewrite_path_properties(
    strip: Optional[bytes], add: Optional[bytes], path: bytes, query: bytes
) -> None:
    out = rewrite_path(Route(strip_prefix=strip, add_prefix=add), path + query)
    assert out.startswith(b"/")
    assert out.endswith(query)
    rest = out[: len(out) - len(query)] if query else out
    if add is not None:
        assert rest.startswith(add.rstrip(b"/"))
    if strip is None and add is None:
        assert out == path + query


@pytest.mark.parametrize(
    ("strip", "add", "target", "expected"),
    [
        (None, None, b"/a?b", b"/a?b"),
        (b"/api", None, b"/api/users?x=1", b"/users?x=1"),
        (b"/api", None, b"/api", b"/"),
        (b"/api/", None, b"/api/users", b"/users"),
        (b"/api", None, b"/other", b"/other"),
        (None, b"/v2", b"/users", b"/v2/users"),
        (None, b"/v2/", b"/users?q", b"/v2/users?q"),
        (b"/api", b"/v2", b"/api/users", b"/v2/users"),
    ],
)
def test_rewrite_path(strip: Optional[bytes], add: Optional[bytes], target: bytes, expected: bytes) -> None:
    assert rewrite_path(Route(strip_prefix=strip, add_prefix=add), target) == expected


def test_header_rules_remove_set_add() -> None:
    headers = [(b"x-a", b"1"), (b"x-b", b"2"), (b"x-a", b"3"), (b"x-c", b"4")]
    rules = HeaderRules(set=((b"x-a", b"new"),), add=((b"x-c", b"5"),), remove=(b"x-b",))
    assert apply_header_rules(rules, headers) == [(b"x-c", b"4"), (b"x-a", b"new"), (b"x-c", b"5")]
    assert headers[0] == (b"x-a", b"1")  # left alone
    assert apply_header_rules(HeaderRules(), headers) is headers


@given(
    headers=st.lists(st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.binary(max_size=3)), max_size=6),
    remove=st.lists(st.sampled_from([b"a", b"b"]), max_size=2),
    set_=st.lists(st.tuples(st.sampled_from([b"b", b"c"]), st.binary(max_size=2)), max_size=2),
)
def test_header_rules_properties(headers: list, remove: list, set_: list) -> None:
    out = apply_header_rules(HeaderRules(set=tuple(set_), remove=tuple(remove)), headers)
    assert not any(name in remove and (name, value) not in set_ for name, value in out)
    for name, value in set_:
        assert (name, value) in out
    set_names = {name for name, _ in set_}
    assert [h for h in headers if h[0] not in set_names and h[0] not in remove] == [
        h for h in out if h[0] not in set_names
    ]


@pytest.mark.parametrize(
    ("template", "status", "scheme", "host", "target", "expected"),
    [
        ("https://{host}{target}", 301, b"http", b"Ex.com:8080", b"/a?b", (301, b"https://ex.com/a?b")),
        ("https://{host}{target}", 308, b"https", b"ex.com", b"/a?b", None),  # its own URL: skipped
        ("https://{host}{target}", 308, b"https", b"ex.com:443", b"/a", None),
        ("https://{host}{target}", 308, b"https", b"ex.com:8443", b"/a", (308, b"https://ex.com/a")),
        ("https://new.example{path}", 302, b"http", b"old", b"/p?q", (302, b"https://new.example/p")),
        ("{scheme}://{host}:{port}/x?{query}", 307, b"http", b"h:81", b"/p?q=1", (307, b"http://h:81/x?q=1")),
        ("/literal{{braces}}", 303, b"http", None, b"/", (303, b"/literal{braces}")),
    ],
)
def test_redirect_for(
    template: str, status: int, scheme: bytes, host: Optional[bytes], target: bytes, expected: object
) -> None:
    route = Route(pool=None, redirect=Redirect(check_template(template), status))
    assert redirect_for(route, scheme, host, target) == expected


def test_no_redirect_without_one() -> None:
    assert redirect_for(Route(), b"http", b"h", b"/") is None


@pytest.mark.parametrize("template", ["", "https://{hostname}/", "{host!r}", "{host:>9}", "{", "a b", "{0}"])
def test_bad_templates(template: str) -> None:
    with pytest.raises(ValueError, match="; "):
        check_template(template)


@pytest.mark.parametrize(
    ("allow", "deny", "address", "permitted"),
    [
        ((), (), "10.0.0.1", True),
        (("10.0.0.0/8",), (), "10.0.0.1", True),
        (("10.0.0.0/8",), (), "192.168.0.1", False),
        (("10.0.0.0/8",), ("10.0.0.5/32",), "10.0.0.5", False),  # deny wins
        ((), ("10.0.0.5/32",), "10.0.0.6", True),
        ((), ("10.0.0.0/8",), "::ffff:10.1.2.3", False),  # IPv4-mapped
        (("::1/128",), (), "::1", True),
        (("10.0.0.0/8",), (), "::1", False),
        (("10.0.0.0/8",), (), "/tmp/socket", False),  # not an IP address
        ((), ("10.0.0.0/8",), "/tmp/socket", True),
    ],
)
def test_acl(allow: tuple, deny: tuple, address: str, permitted: bool) -> None:
    assert Acl(_nets(*allow), _nets(*deny)).permits(address) is permitted
    assert Acl(_nets(*allow), _nets(*deny)).permits(address.encode()) is permitted


TRUSTED = _nets("10.0.0.0/8", "::1/128")


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "expected"),
    [
        ("1.2.3.4", [b"5.6.7.8"], TRUSTED, "1.2.3.4"),  # untrusted peer: XFF ignored
        ("10.0.0.1", [b"5.6.7.8"], (), "10.0.0.1"),  # no trusted proxies
        ("10.0.0.1", [], TRUSTED, "10.0.0.1"),
        ("10.0.0.1", [b"5.6.7.8"], TRUSTED, "5.6.7.8"),
        ("10.0.0.1", [b"9.9.9.9, 5.6.7.8, 10.0.0.2"], TRUSTED, "5.6.7.8"),  # spoofed left part ignored
        ("10.0.0.1", [b"9.9.9.9", b"5.6.7.8"], TRUSTED, "5.6.7.8"),  # several fields
        ("10.0.0.1", [b"10.0.0.3, 10.0.0.2"], TRUSTED, "10.0.0.3"),  # all trusted: the leftmost
        ("10.0.0.1", [b"5.6.7.8, garbage, 10.0.0.2"], TRUSTED, "10.0.0.2"),
        ("10.0.0.1", [b"garbage"], TRUSTED, "10.0.0.1"),
        ("::1", [b"2001:db8::1"], TRUSTED, "2001:db8::1"),
        ("unix", [b"5.6.7.8"], TRUSTED, "unix"),
    ],
)
def test_client_address(peer: str, xff: List[bytes], trusted: tuple, expected: str) -> None:
    assert client_address(peer, xff, trusted) == expected


# -- rate limits ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10/s", (10.0, 10)),
        ("100/m", (100 / 60, 100)),
        ("1000 / h", (1000 / 3600, 1000)),
        ("0.5/s", (0.5, 1)),
    ],
)
def test_parse_rate(text: str, expected: Tuple[float, int]) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize("text", ["10", "0/s", "10/d", "-1/s", "x/s", ""])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. 10/s"):
        parse_rate(text)


def test_rate_limiter_table() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(rate=2.0, burst=3), clock)
    assert [limiter.check("a") for _ in range(4)] == [None, None, None, 1]
    assert limiter.check("b") is None  # another client has its own bucket
    clock.advance(0.5)  # one token back
    assert limiter.check("a") is None
    assert limiter.check("a") == 1


def test_retry_after_rounds_up() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(rate=0.1, burst=1), clock)
    assert limiter.check("a") is None
    assert limiter.check("a") == 10
    clock.advance(9.5)
    assert limiter.check("a") == 1
    assert [retry_after(w) for w in (0.001, 1.0, 1.2, 2.0)] == [1, 1, 2, 2]


def test_memory_is_bounded_least_recently_used_dropped() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(rate=1.0, burst=1), clock, max_clients=2)
    limiter.check("a")
    limiter.check("b")
    limiter.check("a")  # a is now the most recent
    limiter.check("c")  # drops b
    assert len(limiter) == 2
    assert limiter.check("a") == 1  # a kept its empty bucket
    assert limiter.check("b") is None  # b starts again


_moments = st.lists(st.floats(min_value=0, max_value=5, allow_nan=False), min_size=1, max_size=60)


@given(
    rate=st.floats(min_value=0.1, max_value=50),
    burst=st.integers(min_value=1, max_value=20),
    gaps=_moments,
)
def test_bucket_never_allows_more_than_rate_times_t_plus_burst(
    rate: float, burst: int, gaps: List[float]
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now, passed = 0.0, []
    for gap in gaps:
        now += gap
        if bucket.take(now) == 0.0:
            passed.append(now)
    for i, start in enumerate(passed):
        for j in range(i, len(passed)):
            assert j - i + 1 <= rate * (passed[j] - start) + burst + 1e-6


@given(
    rate=st.floats(min_value=0.01, max_value=50),
    burst=st.integers(min_value=1, max_value=5),
    gaps=_moments,
)
def test_retry_after_is_at_least_one_and_accurate(rate: float, burst: int, gaps: List[float]) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = 0.0
    for gap in gaps:
        now += gap
        wait = bucket.take(now)
        if wait:
            seconds = retry_after(wait)
            assert seconds >= 1
            assert seconds == 1 or seconds < wait + 1  # whole seconds, rounded up
            assert bucket.take(now + seconds) == 0.0  # after Retry-After, the request passes
            now += seconds


def test_rate_limiter_answers_retry_after_and_then_passes() -> None:
    clock = Clock()
    limiter = RateLimiter(RateLimit(rate=0.25, burst=2), clock)
    assert [limiter.check("c"), limiter.check("c"), limiter.check("c")] == [None, None, 4]
    clock.advance(3)
    assert limiter.check("c") == 1
    clock.advance(1)
    assert limiter.check("c") is None


# -- request ids and cache keys ------------------------------------------------------------------


def test_request_id_kept_or_generated() -> None:
    headers = [(b"host", b"h"), (b"x-request-id", b"abc")]
    assert request_id(headers, b"x-request-id") == b"abc"
    fresh = request_id([(b"host", b"h"), (b"x-request-id", b" ")], b"x-request-id")
    assert re.fullmatch(rb"[0-9a-f]{32}", fresh)
    made = {request_id([], b"x-trace") for _ in range(1000)}
    assert len(made) == 1000 and all(re.fullmatch(rb"[0-9a-f]{32}", one) for one in made)


def test_cache_key() -> None:
    headers = [(b"x-tenant", b"t1"), (b"accept", b"*/*")]
    plain = cache_key(Route(), b"http", b"Ex.com", b"/a?b=1", headers)
    assert plain == b"http://ex.com/a?b=1"
    assert (
        cache_key(Route(cache_key_query=False), b"http", b"ex.com", b"/a?b=1", headers) == b"http://ex.com/a"
    )
    keyed = cache_key(Route(cache_key_headers=(b"x-tenant",)), b"http", b"ex.com", b"/a", headers)
    assert keyed.startswith(b"http://ex.com/a") and b"t1" in keyed
    other = cache_key(
        Route(cache_key_headers=(b"x-tenant",)), b"http", b"ex.com", b"/a", [(b"x-tenant", b"t2")]
    )
    assert other != keyed


# -- admit: the policies that answer instead of the pool -----------------------------------------


def test_admit_order_acl_redirect_rate_limit() -> None:
    limit = RateLimit(rate=1.0, burst=1)
    route = Route(
        acl=Acl(allow=_nets("10.0.0.0/8")), redirect=Redirect("https://{host}{target}", 308), rate_limit=limit
    )
    limiter = RateLimiter(limit, Clock())

    def admit_(client: str, scheme: bytes) -> object:
        return admit(route, client, limiter, scheme, b"h", b"/a?b")

    assert admit_("192.168.0.1", b"http") == Refusal("acl", 403, FORBIDDEN_REASON, [])
    redirect = Refusal("redirect", 308, b"", [(b"location", b"https://h/a?b")])
    assert admit_("10.0.0.1", b"http") == redirect
    assert admit_("10.0.0.1", b"http") == redirect  # redirects do not take tokens
    assert admit_("10.0.0.1", b"https") is None
    assert admit_("10.0.0.1", b"https") == Refusal(
        "rate-limit", 429, RATE_LIMITED_REASON, [(b"retry-after", b"1")]
    )
    assert admit(Route(), "unix", None, b"http", None, b"/") is None
