"""The cache layer on fake backends (powerlb.testing) and a task.Clock, no sockets.

The request path is built as the service builds it (store, cache layer,
dispatcher, proxy resource, client-facing site with its short way for cache
hits) with a :class:`~powerlb.testing.FakePool` for the backends. Each
client is a real HTTP/1.1 connection of that site on a ``StringTransport``:
bytes in, and the response bytes parsed back into a
:class:`~powerlb.testing.RecordingSink`. The tests read only what a client
and a backend can see, and the counters.
"""

from __future__ import annotations

from typing import Any

import pytest

from powerlb.cachepolicy import url_key
from powerlb.headers import Headers
from tests.support.caching import CACHEABLE, Proxy, results

# --- hits and misses ------------------------------------------------------------------------------


def test_a_miss_is_stored_and_the_next_request_is_a_hit_with_its_age() -> None:
    proxy = Proxy()
    proxy.upstream.answer(200, CACHEABLE, b"stored")
    first = proxy.request()
    assert results([first]) == [(200, b"stored", b"MISS")]
    proxy.clock.advance(10)
    second = proxy.request()

    assert results([second]) == [(200, b"stored", b"HIT")]
    assert second.response.header(b"age") == b"10"
    assert proxy.sent == [b"/x"]
    assert (proxy.counters.cache_misses, proxy.counters.cache_hits) == (1, 1)


def test_a_hit_is_the_same_response_whether_the_channel_or_twisted_web_answers_it() -> None:
    """A plain GET hit may be answered on the channel's short way; any other request goes through
    twisted.web. Both answer alike (up to the Date)."""
    proxy = Proxy()
    proxy.upstream.answer(200, [*CACHEABLE, (b"content-type", b"text/plain")], b"stored")
    proxy.request()
    proxy.clock.advance(3)
    plain = proxy.request().response
    other = proxy.request(headers=[(b"connection", b"keep-alive")]).response

    def undated(headers: Headers) -> Headers:
        return sorted((name, value) for name, value in headers if name != b"date")

    assert (plain.status, plain.reason, undated(plain.headers), plain.body) == (
        other.status,
        other.reason,
        undated(other.headers),
        other.body,
    )
    assert (plain.header(b"x-cache"), plain.header(b"age"), plain.body) == (b"HIT", b"3", b"stored")
    assert proxy.counters.cache_hits == 2


def test_plain_hits_share_a_head_only_while_the_stored_response_and_its_age_do() -> None:
    """The short way makes a key's head once per Age value; an older head never answers for a
    newer age, another stored response, a HEAD's missing body or a client's precondition."""
    proxy = Proxy()
    dated = [*CACHEABLE, (b"date", b"Mon, 07 Dec 2026 04:00:00 GMT"), (b"etag", b'"1"')]
    proxy.upstream.answer(200, [*dated, (b"x-version", b"1")], b"first")
    proxy.request()
    proxy.clock.advance(1)
    hits = [proxy.request().response for _ in range(2)]
    head = proxy.request(method=b"HEAD").response
    conditional = proxy.request(headers=[(b"if-none-match", b'"1"')]).response
    proxy.clock.advance(1)
    later = proxy.request().response

    assert [(r.status, r.header(b"age"), r.body) for r in (*hits, head, conditional, later)] == [
        (200, b"1", b"first"),
        (200, b"1", b"first"),
        (200, b"1", b""),
        (304, b"1", b""),
        (200, b"2", b"first"),
    ]
    assert hits[0].headers == hits[1].headers == head.headers
    assert proxy.cache.purge(url_key(b"http://example/x")) == 1
    proxy.upstream.answer(200, [*dated, (b"x-version", b"2")], b"second")
    proxy.request()
    again = proxy.request().response
    assert (again.header(b"x-version"), again.header(b"age"), again.body) == (b"2", b"0", b"second")
    assert proxy.counters.cache_hits == 6


def test_a_response_without_a_content_type_gets_none_added() -> None:
    """Fetched or stored, on the channel's short way or not: every answer's head is the one block
    the client's sink writes, without twisted.web's default Content-Type."""
    proxy = Proxy()
    proxy.upstream.answer(200, CACHEABLE, b"stored")
    miss = proxy.request().response
    plain_hit = proxy.request().response
    other_hit = proxy.request(headers=[(b"connection", b"keep-alive")]).response
    assert [r.header(b"content-type") for r in (miss, plain_hit, other_hit)] == [None, None, None]


def test_every_finished_request_is_counted_by_backend_status_class_and_cache_result() -> None:
    proxy = Proxy()
    proxy.upstream.answer(200, CACHEABLE, b"stored")
    proxy.request()
    proxy.request()
    proxy.upstream.fail("refused")
    assert proxy.request(b"/down").response.status == 502
    proxy.upstream.answer(201)
    proxy.request(b"/new", b"POST")
    assert proxy.outcomes.snapshot() == {
        "http://127.0.0.1:9001": {"2xx": {"miss": 1, "bypass": 1}, "5xx": {"miss": 1}},
        "": {"2xx": {"hit": 1}},
    }


def test_a_response_that_may_not_be_stored_is_fetched_every_time() -> None:
    proxy = Proxy()
    proxy.upstream.answer(200, [(b"cache-control", b"no-store")], b"private", times=None)
    clients = [proxy.request(), proxy.request()]
    assert results(clients) == [(200, b"private", b"MISS")] * 2
    assert proxy.sent == [b"/x", b"/x"]


def test_an_expired_response_with_a_validator_is_revalidated() -> None:
    proxy = Proxy()
    proxy.upstream.answer(200, [(b"cache-control", b"max-age=1"), (b"etag", b'"v1"')], b"body")
    proxy.request()
    proxy.clock.advance(5)
    proxy.upstream.answer(304, [(b"cache-control", b"max-age=60"), (b"etag", b'"v1"')])
    revalidated = proxy.request()

    assert proxy.upstream.requests[1].header(b"if-none-match") == b'"v1"'
    assert results([revalidated]) == [(200, b"body", b"REVALIDATED")]
    assert results([proxy.request()]) == [(200, b"body", b"HIT")]
    assert len(proxy.sent) == 2


def test_an_unsafe_request_invalidates_the_stored_response() -> None:
    proxy = Proxy()
    proxy.upstream.answer(200, CACHEABLE, b"v1")
    proxy.request()
    proxy.upstream.answer(204)
    assert proxy.request(method=b"POST").x_cache == b"BYPASS"
    proxy.upstream.answer(200, CACHEABLE, b"v2")
    assert results([proxy.request()]) == [(200, b"v2", b"MISS")]
    assert proxy.counters.cache_invalidated == 1


# --- request coalescing ---------------------------------------------------------------------------


def test_concurrent_misses_send_one_request_and_all_get_its_response() -> None:
    proxy = Proxy()
    clients = [proxy.request() for _ in range(5)]
    assert proxy.sent == [b"/x"]
    assert all(c.response.status is None for c in clients)

    proxy.upstream.requests[0].respond(200, CACHEABLE, b"once")
    assert results(clients) == [(200, b"once", b"MISS")] + [(200, b"once", b"COALESCED")] * 4
    assert proxy.sent == [b"/x"]
    assert proxy.counters.cache_coalesced == 4


def test_a_waiting_request_goes_upstream_alone_after_the_lock_timeout() -> None:
    proxy = Proxy(lock_timeout=2.0)
    first = proxy.request()
    second = proxy.request()
    proxy.clock.advance(1.5)
    assert len(proxy.sent) == 1
    proxy.clock.advance(0.5)
    assert len(proxy.sent) == 2

    proxy.upstream.requests[1].respond(200, CACHEABLE, b"second")
    assert results([second]) == [(200, b"second", b"MISS")]
    assert first.response.status is None  # still waiting for its own backend response
    proxy.upstream.requests[0].respond(200, CACHEABLE, b"first")
    assert results([first]) == [(200, b"first", b"MISS")]


def test_waiters_for_a_response_that_cannot_be_stored_go_upstream_and_later_misses_do_not_wait() -> None:
    proxy = Proxy()
    clients = [proxy.request() for _ in range(3)]
    proxy.upstream.answer(200, [(b"cache-control", b"private")], b"own", times=2)  # for the waiters
    proxy.upstream.requests[0].respond(200, [(b"cache-control", b"private")], b"own")
    proxy.clock.advance(0)
    assert len(proxy.sent) == 3  # each waiter fetched its own
    assert results(clients) == [(200, b"own", b"MISS")] * 3

    # For a while the key skips coalescing: concurrent misses go upstream at once (hit-for-pass).
    later = [proxy.request() for _ in range(2)]
    assert len(proxy.sent) == 5
    assert all(c.response.status is None for c in later)


# --- stale responses --------------------------------------------------------------------------------


def test_stale_while_revalidate_serves_stale_and_refreshes_once_in_the_background() -> None:
    proxy = Proxy()
    swr = [(b"cache-control", b"max-age=10, stale-while-revalidate=60")]
    proxy.upstream.answer(200, swr, b"v1")
    proxy.request()
    proxy.clock.advance(15)

    stale = proxy.request()
    assert results([stale]) == [(200, b"v1", b"STALE")]
    assert stale.response.ended  # answered at once: the refresh goes on without it
    assert len(proxy.sent) == 2
    refresh = proxy.upstream.requests[1]
    assert refresh.active
    assert results([proxy.request()]) == [(200, b"v1", b"STALE")]
    assert len(proxy.sent) == 2  # one refresh at a time

    refresh.respond(200, swr, b"v2")
    assert results([proxy.request()]) == [(200, b"v2", b"HIT")]
    assert len(proxy.sent) == 2
    assert proxy.counters.cache_stale == 2


@pytest.mark.parametrize("failure", ["refused", "timeout", 500, 503])
def test_stale_if_error_stands_in_for_a_failing_backend_within_its_window(failure: Any) -> None:
    proxy = Proxy()
    proxy.upstream.answer(200, [(b"cache-control", b"max-age=1, stale-if-error=60")], b"good")
    proxy.request()
    proxy.clock.advance(5)

    if isinstance(failure, int):
        proxy.upstream.answer(failure, body=b"down", times=None)
    else:
        proxy.upstream.fail(failure, times=None)
    assert results([proxy.request()]) == [(200, b"good", b"STALE")]

    proxy.clock.advance(60)  # past the window: the failure is the answer
    late = proxy.request()
    assert late.response.status == (
        failure if isinstance(failure, int) else 502 if failure == "refused" else 504
    )
    assert late.response.body != b"good"


def test_grace_serves_a_stale_response_when_the_backend_fails() -> None:
    proxy = Proxy(grace=30.0)
    proxy.upstream.answer(200, CACHEABLE, b"good")
    proxy.request()
    proxy.clock.advance(80)
    proxy.upstream.fail("refused")
    assert results([proxy.request()]) == [(200, b"good", b"STALE")]


# --- purge --------------------------------------------------------------------------------------------


def stored(proxy: Proxy, *targets: bytes) -> None:
    proxy.upstream.answer(200, CACHEABLE, b"stored", times=len(targets))
    for target in targets:
        assert proxy.request(target).x_cache == b"MISS"


def test_purge_by_url_and_by_prefix() -> None:
    proxy = Proxy()
    stored(proxy, b"/a", b"/a/1", b"/b")

    assert proxy.cache.purge(url_key(b"http://example/b")) == 1
    assert proxy.cache.purge(url_key(b"http://example/a"), prefix=True) == 2
    assert proxy.counters.cache_purged == 3
    proxy.upstream.answer(200, CACHEABLE, b"again", times=None)
    assert [proxy.request(t).x_cache for t in (b"/a", b"/a/1", b"/b")] == [b"MISS"] * 3


def test_purge_requests_from_allowed_addresses_only() -> None:
    proxy = Proxy(purge_allow=["127.0.0.0/8"])
    stored(proxy, b"/p")

    refused = proxy.request(b"/p", b"PURGE", peer="10.1.2.3")
    assert refused.response.status == 403
    assert proxy.request(b"/p").x_cache == b"HIT"
    purged = proxy.request(b"/p", b"PURGE")
    assert (purged.response.status, purged.response.body) == (200, b"200 OK: purged 1 stored response(s)\n")
    assert proxy.request(b"/p", b"PURGE").response.status == 404
    assert len(proxy.sent) == 1  # PURGE never goes upstream
