"""The client channel's short way for cache hits: same answers as the normal way, only for plain requests."""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st

from powerlb.server import Limits, parse_simple_request
from powerlb.settings import Config
from tests.support.inproc import exchange, headers_of

LIMITS = Limits(Config(max_url_length=64, max_header_size=512, max_headers=4))


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"GET /a?b=1 HTTP/1.1\r\nHost: x\r\n\r\n", (b"GET", b"/a?b=1", [(b"host", b"x")])),
        (
            b"HEAD / HTTP/1.1\r\nHost: x\r\nAccept:  text/html \r\n\r\n",
            (b"HEAD", b"/", [(b"host", b"x"), (b"accept", b"text/html")]),
        ),
    ],
)
def test_plain_requests_are_simple(
    data: bytes, expected: Tuple[bytes, bytes, List[Tuple[bytes, bytes]]]
) -> None:
    assert parse_simple_request(data, LIMITS) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\n\r\n",  # not GET/HEAD
        b"GET / HTTP/1.0\r\nHost: x\r\n\r\n",  # not HTTP/1.1
        b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",  # absolute form
        b"GET / HTTP/1.1\r\nHost: x\r\n",  # incomplete
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",  # pipelined
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",  # connection handling
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",  # framing
        b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",  # not a token
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",  # NUL
        b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",  # two Host headers (400 the normal way)
        b"GET /" + b"u" * 64 + b" HTTP/1.1\r\nHost: x\r\n\r\n",  # target over the limit
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"\r\n",  # too many headers
    ],
)
def test_anything_unusual_takes_the_normal_way(data: bytes) -> None:
    assert parse_simple_request(data, LIMITS) is None


@given(st.binary(max_size=200))
def test_parsing_never_raises(data: bytes) -> None:
    parse_simple_request(data, LIMITS)


def cacheable(request: Any) -> bytes:
    request.setHeader(b"cache-control", b"max-age=60")
    request.setHeader(b"etag", b'"e1"')
    return b"stored body"


@pytest_twisted.ensureDeferred
async def test_fast_hit_equals_the_normal_way(make_backends, start_powerlb):
    (a,) = make_backends(1)

    a.routes[b"/c"] = cacheable
    lb = start_powerlb([a])
    plain = b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n"
    normal = b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    (miss,) = await exchange(lb.port, normal)
    assert b"\r\nX-Cache: MISS\r\n" in miss  # a proxied response's head block too
    (slow,) = await exchange(lb.port, normal)
    (fast,) = await exchange(lb.port, plain)
    assert b"X-Cache: HIT" in slow
    assert b"\r\nX-Cache: HIT\r\n" in fast  # the short way writes them as twisted.web does
    assert headers_of(fast) == headers_of(slow)
    head_request = b"HEAD /c HTTP/1.1\r\nHost: x\r\n\r\n"
    (head_fast, after_head) = await exchange(lb.port, head_request + plain, count=2, bodiless=True)
    assert headers_of(head_fast)[1][b"content-length"] == b"11"
    assert head_fast.endswith(b"\r\n\r\n")
    assert after_head.startswith(b"HTTP/1.1 200 ")  # no body of the HEAD's ahead of the next response
    assert a.served() == 1
    stats = lb.service.stats()
    assert (stats["requests"], stats["cache"]["hits"], stats["cache"]["misses"]) == (5, 4, 1)
    # Two plain requests in one read take the normal way, answered in order.
    both = await exchange(lb.port, plain + b"GET /c?2 HTTP/1.1\r\nHost: x\r\n\r\n", count=2)
    assert [headers_of(r)[1][b"x-cache"] for r in both] == [b"HIT", b"MISS"]


@pytest_twisted.ensureDeferred
async def test_stale_or_conditional_requests_are_not_answered_the_short_way(make_backends, start_powerlb):
    (a,) = make_backends(1)

    a.routes[b"/c"] = cacheable
    lb = start_powerlb([a])
    await exchange(lb.port, b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n")
    (conditional,) = await exchange(lb.port, b'GET /c HTTP/1.1\r\nHost: x\r\nIf-None-Match: "e1"\r\n\r\n')
    assert headers_of(conditional)[0] == 304
    (no_cache,) = await exchange(lb.port, b"GET /c HTTP/1.1\r\nHost: x\r\nCache-Control: no-cache\r\n\r\n")
    assert headers_of(no_cache)[1][b"x-cache"] == b"MISS"  # went to the backend (which ignores validators)
    assert a.served() == 2


def names_of(response: bytes) -> List[bytes]:
    """The header names of a response as written, in order, without those that differ per response."""
    lines = response.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]
    names = [line.partition(b":")[0] for line in lines]
    return sorted(n for n in names if n.lower() not in (b"age", b"date", b"x-cache"))


@pytest_twisted.ensureDeferred
async def test_hits_carry_header_names_as_the_miss_did(make_backends, start_powerlb):
    """A hit, the short way or the normal way, writes each header name in the case the miss had."""
    (a,) = make_backends(1)

    def mixed(request: Any) -> bytes:
        request.setHeader(b"Cache-Control", b"max-age=60")
        request.setHeader(b"ETag", b'"m"')
        request.setHeader(b"x-lower-case", b"1")
        request.setHeader(b"X-Powered-By", b"test")
        request.setHeader(b"WWW-Authenticate", b"Basic")
        return b"mixed"

    a.routes[b"/m"] = mixed
    lb = start_powerlb([a])
    normal = b"GET /m HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n"
    (miss,) = await exchange(lb.port, normal)
    (slow,) = await exchange(lb.port, normal)
    (fast,) = await exchange(lb.port, b"GET /m HTTP/1.1\r\nHost: x\r\n\r\n")
    assert [headers_of(r)[1][b"x-cache"] for r in (miss, slow, fast)] == [b"MISS", b"HIT", b"HIT"]
    assert b"ETag" in names_of(miss) and b"X-Lower-Case" in names_of(miss)
    assert names_of(fast) == names_of(slow) == names_of(miss)
    for response in (slow, fast):
        assert b"\r\nAge: " in response and b"\r\nDate: " in response and b"\r\nX-Cache: HIT" in response
