"""End to end: the shared cache's RFC 9111 / RFC 5861 / RFC 9213 behaviour through a real powerlb.

Each test drives a real origin (a TestBackend) through a real powerlb over
sockets; the timing rules themselves are table-tested with an explicit ``now``
in test_cachepolicy.py, so these use the real clock only where they must.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import pytest_twisted
from twisted.internet import defer
from twisted.web.server import NOT_DONE_YET

from tests.support.inproc import fetch, origin, sleep

DATE_PAST = b"Sun, 06 Nov 1994 08:49:37 GMT"


def cache_layer(lb: Any) -> Any:
    """The running instance's CacheLayer."""
    return lb.service.proxy_listener.factory.resource.cache


def served(backend: Any, path: bytes) -> int:
    """Requests for ``path`` (any query) the backend received."""
    return sum(1 for r in backend.requests if r.uri.split(b"?")[0] == path)


# --- freshness, Age, Expires (RFC 9111 sections 4.2, 5.1, 5.3) ---------------------------------


@pytest_twisted.ensureDeferred
async def test_freshness_from_s_maxage_max_age_expires_and_heuristic(make_backends, start_powerlb, http):
    """RFC 9111 4.2.1/4.2.2: explicit and heuristic freshness give hits; invalid Expires is stale."""
    (a,) = make_backends(1)
    a.routes.update(
        {
            b"/smax": origin(cache_control=b"max-age=0, s-maxage=60"),
            b"/heuristic": origin(last_modified=DATE_PAST),
            b"/bad-expires": origin(expires=b"0"),
            b"/no-validator": origin(),
        }
    )
    lb = start_powerlb([a])
    for path in ("/smax", "/heuristic"):
        assert (await fetch(http, lb.url + path)).x_cache == b"MISS"
        hit = await fetch(http, lb.url + path)
        assert (hit.x_cache, hit.body) == (b"HIT", b"body #1"), path
    for path in ("/bad-expires", "/no-validator"):
        for _ in range(2):
            assert (await fetch(http, lb.url + path)).x_cache == b"MISS"
    assert served(a, b"/bad-expires") == 2


INVALID_EXPIRES = [
    b"Sun, 06 Nov 2050 8:49:37 GMT",  # one-digit hour
    b"Sun, 06 Nov 50 08:49:37 GMT",  # two-digit year
    b"Sun, 06-Nov-2050 08:49:37 GMT",  # dashes
    b"Sun,  06 Nov 2050 08:49:37 GMT",  # doubled space
    b"Sun 06 Nov 2050 08:49:37 GMT",  # missing comma
    b"Sun, 06 Nov 2050 08:49:37 UTC",  # zone other than GMT
    b"Sun, 06 Nov 2050 08.49.37 GMT",  # periods in the time
]
VALID_EXPIRES = [
    b"Sun, 06 Nov 2050 08:49:37 GMT",  # IMF-fixdate
    b"Sunday, 06-Nov-50 08:49:37 GMT",  # RFC 850
    b"Sun Nov  6 08:49:37 2050",  # asctime
]


@pytest_twisted.ensureDeferred
async def test_expires_must_be_an_http_date(make_backends, start_powerlb, http):
    """RFC 9111 5.3, RFC 9110 5.6.7: an Expires that is not exactly an HTTP-date means already stale."""
    (a,) = make_backends(1)
    for number, value in enumerate(INVALID_EXPIRES):
        a.routes[b"/bad%d" % number] = origin(expires=value)
    for number, value in enumerate(VALID_EXPIRES):
        a.routes[b"/good%d" % number] = origin(expires=value)
    lb = start_powerlb([a])
    for number, value in enumerate(INVALID_EXPIRES):
        for _ in range(2):
            assert (await fetch(http, lb.url + f"/bad{number}")).x_cache == b"MISS", value
    for number, value in enumerate(VALID_EXPIRES):
        await fetch(http, lb.url + f"/good{number}")
        assert (await fetch(http, lb.url + f"/good{number}")).x_cache == b"HIT", value


@pytest_twisted.ensureDeferred
async def test_age_list_first_value_counts(make_backends, start_powerlb, http):
    """RFC 9111 5.1: with Age: 7200, 0 on one line the response is two hours old (stale at max-age=3600)."""
    (a,) = make_backends(1)
    a.routes[b"/old"] = origin(cache_control=b"max-age=3600", age=b"7200, 0")
    a.routes[b"/young"] = origin(cache_control=b"max-age=3600", age=b"0, 7200")
    lb = start_powerlb([a])
    for _ in range(2):
        assert (await fetch(http, lb.url + "/old")).x_cache == b"MISS"
    await fetch(http, lb.url + "/young")
    hit = await fetch(http, lb.url + "/young")
    assert hit.x_cache == b"HIT" and int(hit.header(b"age")) < 5


@pytest_twisted.ensureDeferred
async def test_age_counts_upstream_age_and_date_is_kept(make_backends, start_powerlb, http):
    """RFC 9111 4.2.3 and 5.1: Age includes the upstream Age; Date is the origin's."""
    (a,) = make_backends(1)
    a.routes[b"/aged"] = origin(cache_control=b"max-age=100", age=b"30")
    a.routes[b"/old"] = origin(cache_control=b"max-age=100", age=b"99")
    lb = start_powerlb([a])
    first = await fetch(http, lb.url + "/aged")
    hit = await fetch(http, lb.url + "/aged")
    assert hit.x_cache == b"HIT"
    assert 30 <= int(hit.header(b"age")) <= 32
    assert hit.header(b"date") == first.header(b"date")
    # Age 99 of 100: stale within a second or two; then it is fetched again.
    await fetch(http, lb.url + "/old")
    await sleep(1.1)
    assert (await fetch(http, lb.url + "/old")).x_cache == b"MISS"


# --- request directives (RFC 9111 section 5.2.1) -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_request_directives(make_backends, start_powerlb, http):
    """RFC 9111 5.2.1: no-cache, max-age, min-fresh, Pragma and only-if-cached from the client."""
    (a,) = make_backends(1)
    a.routes[b"/r"] = origin(cache_control=b"max-age=60")
    lb = start_powerlb([a])
    url = lb.url + "/r"
    only = await fetch(http, url, cache_control=b"only-if-cached")
    assert only.code == 504  # 5.2.1.7: nothing stored
    await fetch(http, url)
    assert (await fetch(http, url, cache_control=b"only-if-cached")).x_cache == b"HIT"
    assert (await fetch(http, url, cache_control=b"no-cache")).x_cache == b"MISS"  # 5.2.1.4
    assert (await fetch(http, url, pragma=b"no-cache")).x_cache == b"MISS"  # 5.4
    assert (await fetch(http, url, cache_control=b"min-fresh=100")).x_cache == b"MISS"  # 5.2.1.3
    await sleep(1.05)
    assert (await fetch(http, url, cache_control=b"max-age=0")).x_cache == b"MISS"  # 5.2.1.1
    assert (await fetch(http, url, cache_control=b"max-age=30")).x_cache == b"HIT"
    assert served(a, b"/r") == 5


@pytest_twisted.ensureDeferred
async def test_max_stale_serves_stale_with_consent(make_backends, start_powerlb, http):
    """RFC 9111 5.2.1.2: max-stale lets the client accept a stale response."""
    (a,) = make_backends(1)
    a.routes[b"/s"] = origin(cache_control=b"max-age=1", etag=b'"v"')
    lb = start_powerlb([a])
    await fetch(http, lb.url + "/s")
    await sleep(1.05)
    stale = await fetch(http, lb.url + "/s", cache_control=b"max-stale=60")
    assert (stale.x_cache, stale.body) == (b"STALE", b"body #1")


# --- Vary (RFC 9111 section 4.1) ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_vary_variants_normalised_and_vary_star(make_backends, start_powerlb, http):
    """RFC 9111 4.1: one variant per normalised value; Vary: * never matches."""
    (a,) = make_backends(1)

    def negotiated(request: Any) -> bytes:
        request.setHeader(b"cache-control", b"max-age=60")
        request.setHeader(b"vary", b"Accept-Language")
        return b"for " + (request.getHeader(b"accept-language") or b"none")

    a.routes[b"/v"] = negotiated
    a.routes[b"/star"] = origin(cache_control=b"max-age=60", vary=b"*")
    lb = start_powerlb([a])
    await fetch(http, lb.url + "/v", accept_language=b"fr,en")
    await fetch(http, lb.url + "/v")
    spaced = await fetch(http, lb.url + "/v", accept_language=b"fr ,  en")
    plain = await fetch(http, lb.url + "/v")
    assert (spaced.x_cache, spaced.body) == (b"HIT", b"for fr,en")
    assert (plain.x_cache, plain.body) == (b"HIT", b"for none")
    assert (await fetch(http, lb.url + "/v", accept_language=b"en")).x_cache == b"MISS"
    for _ in range(2):
        assert (await fetch(http, lb.url + "/star")).x_cache == b"MISS"


@pytest_twisted.ensureDeferred
async def test_vary_accept_language_and_encoding_ignore_case_order_whitespace(
    make_backends, start_powerlb, http
):
    """RFC 9111 4.1 (normalising selecting fields): one variant for the same preferences however written."""
    (a,) = make_backends(1)

    def negotiated(request: Any) -> bytes:
        request.setHeader(b"cache-control", b"max-age=60")
        request.setHeader(b"vary", b"Accept-Language, Accept-Encoding")
        return b"negotiated"

    a.routes[b"/n"] = negotiated
    lb = start_powerlb([a])
    first = await fetch(http, lb.url + "/n", accept_language=b"fr, en;q=0.8", accept_encoding=b"gzip, br")
    again = await fetch(http, lb.url + "/n", accept_language=b"EN ; q=0.8,FR", accept_encoding=b"BR,gzip")
    assert (first.x_cache, again.x_cache) == (b"MISS", b"HIT")
    other = await fetch(http, lb.url + "/n", accept_language=b"fr, en;q=0.9", accept_encoding=b"gzip, br")
    assert other.x_cache == b"MISS"
    assert served(a, b"/n") == 2


# --- revalidation (RFC 9111 sections 3.2, 4.3) --------------------------------------------------


def validating(state: Dict[str, Any]) -> Any:
    """An origin with ETag "v1" answering 304 to a matching If-None-Match, with new headers."""

    def respond(request: Any) -> bytes:
        request.setHeader(b"etag", b'"v1"')
        request.setHeader(b"cache-control", state["cache_control"])
        request.setHeader(b"x-version", b"%d" % len(state["seen"]))
        state["seen"].append(request.getHeader(b"if-none-match"))
        if request.getHeader(b"if-none-match") == b'"v1"':
            request.setResponseCode(304)
            return b""
        return b"the full body"

    return respond


@pytest_twisted.ensureDeferred
async def test_stale_entry_revalidated_and_304_updates_headers(make_backends, start_powerlb, http):
    """RFC 9111 4.3.1/4.3.4/3.2: If-None-Match upstream, 304 served as the updated stored response."""
    (a,) = make_backends(1)
    state: Dict[str, Any] = {"seen": [], "cache_control": b"max-age=1"}
    a.routes[b"/e"] = validating(state)
    lb = start_powerlb([a])
    first = await fetch(http, lb.url + "/e")
    assert (first.x_cache, first.body) == (b"MISS", b"the full body")
    await sleep(1.05)
    state["cache_control"] = b"max-age=60"
    revalidated = await fetch(http, lb.url + "/e")
    assert revalidated.code == 200
    assert (revalidated.x_cache, revalidated.body) == (b"REVALIDATED", b"the full body")
    assert revalidated.header(b"x-version") == b"1"  # updated from the 304
    assert revalidated.length == 13
    assert state["seen"] == [None, b'"v1"']
    hit = await fetch(http, lb.url + "/e")  # the 304's max-age=60 now applies
    assert (hit.x_cache, hit.header(b"x-version")) == (b"HIT", b"1")


@pytest_twisted.ensureDeferred
async def test_no_cache_response_always_revalidated(make_backends, start_powerlb, http):
    """RFC 9111 5.2.2.4: a no-cache response is stored but validated before each reuse."""
    (a,) = make_backends(1)
    state: Dict[str, Any] = {"seen": [], "cache_control": b"no-cache"}
    a.routes[b"/n"] = validating(state)
    lb = start_powerlb([a])
    await fetch(http, lb.url + "/n")
    for _ in range(2):
        again = await fetch(http, lb.url + "/n")
        assert (again.x_cache, again.body) == (b"REVALIDATED", b"the full body")
    assert state["seen"] == [None, b'"v1"', b'"v1"']


@pytest_twisted.ensureDeferred
async def test_client_conditional_answered_from_cache(make_backends, start_powerlb, http):
    """RFC 9111 4.3.2: matching If-None-Match / If-Modified-Since get 304 from the cache."""
    (a,) = make_backends(1)
    a.routes[b"/c"] = origin(cache_control=b"max-age=60", etag=b'W/"x"', last_modified=DATE_PAST)
    lb = start_powerlb([a])
    await fetch(http, lb.url + "/c")
    weak = await fetch(http, lb.url + "/c", if_none_match=b'"x"')
    assert (weak.code, weak.body, weak.x_cache) == (304, b"", b"HIT")
    assert weak.header(b"etag") == b'W/"x"'
    since = await fetch(http, lb.url + "/c", if_modified_since=b"Mon, 07 Nov 1994 08:49:37 GMT")
    assert since.code == 304
    both = await fetch(http, lb.url + "/c", if_none_match=b'"y"', if_modified_since=DATE_PAST)
    assert (both.code, both.body) == (200, b"body #1")  # If-None-Match wins
    assert served(a, b"/c") == 1


@pytest_twisted.ensureDeferred
async def test_if_modified_since_uses_date_without_last_modified(make_backends, start_powerlb, http):
    """RFC 9111 4.3.2: a fresh stored response without Last-Modified answers If-Modified-Since with 304
    when its Date is not later."""
    (a,) = make_backends(1)
    a.routes[b"/d"] = origin(cache_control=b"max-age=60")
    lb = start_powerlb([a])
    first = await fetch(http, lb.url + "/d")
    date = first.header(b"date")
    assert first.header(b"last-modified") is None and date is not None
    since = await fetch(http, lb.url + "/d", if_modified_since=date)
    assert (since.code, since.body, since.x_cache) == (304, b"", b"HIT")
    assert since.header(b"date") == date
    earlier = await fetch(http, lb.url + "/d", if_modified_since=DATE_PAST)
    assert (earlier.code, earlier.body) == (200, b"body #1")
    bad_date = await fetch(http, lb.url + "/d", if_modified_since=date.replace(b" GMT", b" UTC"))
    assert bad_date.code == 200  # not an HTTP-date: ignored (RFC 9110 13.1.3)
    assert served(a, b"/d") == 1


# --- stale (RFC 5861) ---------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stale_while_revalidate_serves_stale_and_refreshes_once(make_backends, start_powerlb, http):
    """RFC 5861 3: stale served at once; one background refresh per key updates the entry."""
    (a,) = make_backends(1)
    # max-age=2: Date has whole seconds, so a refreshed entry is fresh for at least 1 s.
    a.routes[b"/swr"] = origin(cache_control=b"max-age=2, stale-while-revalidate=30")
    lb = start_powerlb([a])
    await fetch(http, lb.url + "/swr")
    await sleep(2.05)
    stale = await defer.gatherResults([defer.ensureDeferred(fetch(http, lb.url + "/swr")) for _ in range(3)])
    assert (stale[0].x_cache, stale[0].body) == (b"STALE", b"body #1")
    # The refresh may land before the later requests arrive: then they are fresh hits on it.
    assert all((r.x_cache, r.body) in ((b"STALE", b"body #1"), (b"HIT", b"body #2")) for r in stale)
    for _ in range(100):
        if served(a, b"/swr") == 2 and not cache_layer(lb).flights:
            break
        await sleep(0.01)
    fresh = await fetch(http, lb.url + "/swr")
    assert (fresh.x_cache, fresh.body) == (b"HIT", b"body #2")
    assert served(a, b"/swr") == 2


@pytest_twisted.ensureDeferred
async def test_stale_if_error_and_grace_but_not_must_revalidate(make_backends, start_powerlb, http):
    """RFC 5861 4: stale served on 5xx, on a dead backend; must-revalidate forbids it (RFC 9111 4.2.4)."""
    (a,) = make_backends(1)
    mode = {"fail": False}

    def flaky(cache_control: bytes) -> Any:
        def respond(request: Any) -> bytes:
            if mode["fail"]:
                request.setResponseCode(503)
                return b"down"
            request.setHeader(b"cache-control", cache_control)
            return b"good"

        return respond

    a.routes[b"/sie"] = flaky(b"max-age=1, stale-if-error=60")
    a.routes[b"/grace"] = flaky(b"max-age=1")
    a.routes[b"/must"] = flaky(b"max-age=1, must-revalidate, stale-if-error=60")
    lb = start_powerlb([a], cache_grace="1m")
    for path in ("/sie", "/grace", "/must"):
        await fetch(http, lb.url + path)
    await sleep(1.05)
    mode["fail"] = True
    for path in ("/sie", "/grace"):
        stale = await fetch(http, lb.url + path)
        assert (stale.code, stale.x_cache, stale.body) == (200, b"STALE", b"good"), path
    must = await fetch(http, lb.url + "/must")
    assert (must.code, must.body) == (503, b"down")
    await a.stop()  # connection refused: powerlb's own 502, still answered stale
    assert (await fetch(http, lb.url + "/sie")).x_cache == b"STALE"
    assert (await fetch(http, lb.url + "/must")).code == 502


# --- coalescing ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_concurrent_misses_send_one_request_upstream(make_backends, start_powerlb, http):
    """N concurrent clients of one object: exactly one upstream request, everyone gets the body."""
    (a,) = make_backends(1)
    held: List[Any] = []

    def slow(request: Any) -> Any:
        request.setHeader(b"cache-control", b"max-age=60")
        held.append(request)
        return NOT_DONE_YET

    a.routes[b"/co"] = slow
    lb = start_powerlb([a])
    pending = [defer.ensureDeferred(fetch(http, lb.url + "/co")) for _ in range(10)]
    flights = cache_layer(lb).flights
    for _ in range(200):
        if held and sum(len(f.waiters) for f in flights.values()) == 9:
            break
        await sleep(0.01)
    held[0].write(b"shared")
    held[0].finish()
    responses = await defer.gatherResults(pending)
    assert [r.body for r in responses] == [b"shared"] * 10
    assert sorted(r.x_cache for r in responses) == [b"COALESCED"] * 9 + [b"MISS"]
    assert served(a, b"/co") == 1
    stats = lb.service.stats()["cache"]
    assert (stats["coalesced"], stats["misses"]) == (9, 1)


@pytest_twisted.ensureDeferred
async def test_waiters_go_upstream_when_the_response_is_not_cacheable(make_backends, start_powerlb, http):
    """Coalesced requests whose shared response cannot be stored are sent upstream themselves."""
    (a,) = make_backends(1)
    held: List[Any] = []

    def private(request: Any) -> Any:
        request.setHeader(b"cache-control", b"private")
        held.append(request)
        if len(held) > 1:
            return b"own"
        return NOT_DONE_YET

    a.routes[b"/p"] = private
    lb = start_powerlb([a], cache_lock_timeout="2s")
    pending = [defer.ensureDeferred(fetch(http, lb.url + "/p")) for _ in range(3)]
    while not held:
        await sleep(0.01)
    await sleep(0.05)
    held[0].write(b"first")
    held[0].finish()
    bodies = sorted(r.body for r in await defer.gatherResults(pending))
    assert bodies == [b"first", b"own", b"own"]
    assert served(a, b"/p") == 3


# --- invalidation and purge (RFC 9111 section 4.4) ----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_unsafe_methods_invalidate_target_and_locations(make_backends, start_powerlb, http):
    """RFC 9111 4.4: a successful unsafe request invalidates its URL, Location, Content-Location."""
    (a,) = make_backends(1)
    for path in (b"/item", b"/other", b"/list"):
        a.routes[path] = origin(cache_control=b"max-age=60")
    a.routes[b"/post"] = origin(location=b"/other", content_location=b"http://elsewhere/list")

    def failing(request: Any) -> bytes:
        request.setResponseCode(500)
        return b"no"

    lb = start_powerlb([a])
    for path in ("/item", "/other", "/list"):
        await fetch(http, lb.url + path)

    async def cached(path: str) -> bool:
        return (await fetch(http, lb.url + path, cache_control=b"only-if-cached")).code == 200

    a.routes[b"/item"] = failing
    await fetch(http, lb.url + "/item", method="DELETE")  # an error: nothing invalidated
    assert await cached("/item")
    a.routes[b"/item"] = origin(cache_control=b"max-age=60")
    await fetch(http, lb.url + "/item", method="FROB")
    assert not await cached("/item")
    a.routes[b"/other"] = a.routes[b"/post"]
    post = await fetch(http, lb.url + "/other", method="POST")
    assert post.x_cache == b"BYPASS"
    assert not await cached("/other")
    assert await cached("/list")  # another origin's Content-Location
    assert lb.service.stats()["cache"]["invalidated"] == 2


@pytest_twisted.ensureDeferred
async def test_purge_method_from_allowed_addresses_only(make_backends, start_powerlb, http):
    """PURGE on the proxy listener: 403 unless purge-allow matches, 200 when removed, 404 when not."""
    (a,) = make_backends(1)
    a.routes[b"/x"] = origin(cache_control=b"max-age=60")
    lb = start_powerlb([a], purge_allow="10.0.0.0/8")
    await fetch(http, lb.url + "/x")
    assert (await fetch(http, lb.url + "/x", method="PURGE")).code == 403
    lb2 = start_powerlb([a], purge_allow="127.0.0.1")
    await fetch(http, lb2.url + "/x")
    purged = await fetch(http, lb2.url + "/x", method="PURGE")
    assert purged.code == 200 and b"purged 1" in purged.body
    assert (await fetch(http, lb2.url + "/x", method="PURGE")).code == 404
    assert (await fetch(http, lb2.url + "/x")).x_cache == b"MISS"
    assert lb2.service.stats()["cache"]["purged"] == 1
    assert served(a, b"/x") == 3  # PURGE never reaches the backend


# --- POST responses reused for GET (RFC 9111 section 4, RFC 9110 section 9.3.3) -----------------


@pytest_twisted.ensureDeferred
async def test_post_response_with_own_content_location_answers_later_get(make_backends, start_powerlb, http):
    """RFC 9111 4 and RFC 9110 9.3.3: explicit freshness and Content-Location equal to the target."""
    (a,) = make_backends(1)

    def form(location: bytes) -> Any:
        def respond(request: Any) -> bytes:
            request.setHeader(b"cache-control", b"max-age=60")
            request.setHeader(b"content-location", location)
            return request.method + b" answer to " + request.content.read()

        return respond

    a.routes[b"/form"] = form(b"/form")
    a.routes[b"/elsewhere"] = form(b"/other")
    lb = start_powerlb([a])
    await fetch(http, lb.url + "/form")  # a stored GET response, replaced by the POST's
    posted = await http.request("POST", lb.url + "/form", data=b"x=1")
    assert (await posted.content(), posted.headers.getRawHeaders(b"x-cache")) == (
        b"POST answer to x=1",
        [b"BYPASS"],
    )
    hit = await fetch(http, lb.url + "/form")
    assert (hit.x_cache, hit.body) == (b"HIT", b"POST answer to x=1")
    await http.request("POST", lb.url + "/elsewhere", data=b"y")
    assert (await fetch(http, lb.url + "/elsewhere")).x_cache == b"MISS"
    assert [r.method for r in a.requests if r.uri == b"/form"] == [b"GET", b"POST"]


# --- range (RFC 9110 section 14) ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_range_requests_answered_from_the_cache(make_backends, start_powerlb, http):
    """RFC 9110 14: a single range of a stored 200 is a 206 from the cache; 206s are never stored."""
    (a,) = make_backends(1)
    a.routes[b"/r"] = lambda request: (request.setHeader(b"cache-control", b"max-age=60"), b"0123456789")[1]
    lb = start_powerlb([a])
    await fetch(http, lb.url + "/r")
    part = await fetch(http, lb.url + "/r", range=b"bytes=3-5")
    assert (part.code, part.body, part.x_cache) == (206, b"345", b"HIT")
    assert part.header(b"content-range") == b"bytes 3-5/10"
    suffix = await fetch(http, lb.url + "/r", range=b"bytes=-2")
    assert (suffix.code, suffix.body) == (206, b"89")
    bad = await fetch(http, lb.url + "/r", range=b"bytes=20-")
    assert (bad.code, bad.header(b"content-range")) == (416, b"bytes */10")
    assert served(a, b"/r") == 1


def ranges(body: bytes, seen: List[Optional[bytes]], **headers: bytes) -> Any:
    """A route serving ``body`` that honours a single ``bytes=first-last`` Range with a 206."""

    def respond(request: Any) -> bytes:
        asked = request.getHeader(b"range")
        seen.append(asked)
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-").encode(), value)
        if asked is None:
            return body
        first, last = (int(n) for n in asked.split(b"=")[1].split(b"-"))
        request.setResponseCode(206)
        request.setHeader(b"content-range", b"bytes %d-%d/%d" % (first, last, len(body)))
        return body[first : last + 1]

    return respond


@pytest_twisted.ensureDeferred
async def test_stored_206_answers_the_ranges_it_covers(make_backends, start_powerlb, http):
    """RFC 9111 3.3, RFC 9110 14: a 206 of an object too big to store whole is stored; later ranges
    within it are hits, others go upstream; a request without Range never gets it."""
    (a,) = make_backends(1)
    seen: List[Optional[bytes]] = []
    video = bytes(range(256)) * 16
    a.routes[b"/video"] = ranges(video, seen, cache_control=b"max-age=60", etag=b'"v"')
    lb = start_powerlb([a], cache_max_object=2000)
    url = lb.url + "/video"
    first = await fetch(http, url, range=b"bytes=0-99")  # fetched whole: too big, not stored
    assert (first.code, first.body, first.x_cache) == (206, video[:100], b"MISS")
    stored = await fetch(http, url, range=b"bytes=0-999")  # goes upstream as asked: the 206 is stored
    assert (stored.code, stored.body, stored.x_cache) == (206, video[:1000], b"MISS")
    for asked, first_byte, last_byte in ((b"bytes=100-199", 100, 199), (b"bytes=0-999", 0, 999)):
        hit = await fetch(http, url, range=asked)
        assert (hit.code, hit.body, hit.x_cache) == (206, video[first_byte : last_byte + 1], b"HIT")
        assert hit.header(b"content-range") == b"bytes %d-%d/4096" % (first_byte, last_byte)
        assert hit.length == last_byte - first_byte + 1
    outside = await fetch(http, url, range=b"bytes=900-1100")
    assert (outside.code, outside.body, outside.x_cache) == (206, video[900:1101], b"MISS")
    whole = await fetch(http, url)
    assert (whole.code, whole.body, whole.x_cache) == (200, video, b"MISS")
    head = await fetch(http, url, method="HEAD")
    assert head.x_cache == b"MISS"
    assert seen == [None, b"bytes=0-999", b"bytes=900-1100", None, None]


# --- Authorization, cookies, targeted field -----------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_authorization_and_cookies(make_backends, start_powerlb, http):
    """RFC 9111 3.5 (Authorization needs public/s-maxage/must-revalidate) and Set-Cookie rules."""
    (a,) = make_backends(1)
    a.routes.update(
        {
            b"/auth": origin(cache_control=b"max-age=60"),
            b"/auth-smax": origin(cache_control=b"s-maxage=60"),
            b"/auth-must": origin(cache_control=b"max-age=60, must-revalidate"),
            b"/cookie": origin(cache_control=b"max-age=60", set_cookie=b"id=1"),
            b"/cookie-public": origin(cache_control=b"public, max-age=60", set_cookie=b"id=1"),
        }
    )
    lb = start_powerlb([a])
    expected = {"/auth": b"MISS", "/auth-smax": b"HIT", "/auth-must": b"HIT"}
    for path, second in expected.items():
        await fetch(http, lb.url + path, authorization=b"Bearer t")
        assert (await fetch(http, lb.url + path, authorization=b"Bearer t")).x_cache == second, path
    await fetch(http, lb.url + "/cookie")
    assert (await fetch(http, lb.url + "/cookie")).x_cache == b"MISS"
    await fetch(http, lb.url + "/cookie-public")
    assert (await fetch(http, lb.url + "/cookie-public")).x_cache == b"HIT"


@pytest_twisted.ensureDeferred
async def test_targeted_cache_control_wins_and_is_forwarded(make_backends, start_powerlb, http):
    """RFC 9213 2.1: CDN-Cache-Control overrides Cache-Control and is forwarded for a CDN further down."""
    (a,) = make_backends(1)
    a.routes[b"/t"] = origin(cache_control=b"no-store", cdn_cache_control=b"max-age=60")
    lb = start_powerlb([a])
    first = await fetch(http, lb.url + "/t")
    hit = await fetch(http, lb.url + "/t")
    assert (first.x_cache, hit.x_cache) == (b"MISS", b"HIT")
    assert first.header(b"cdn-cache-control") == hit.header(b"cdn-cache-control") == b"max-age=60"
    assert hit.header(b"cache-control") == b"no-store"


@pytest_twisted.ensureDeferred
async def test_invalid_targeted_field_is_ignored_for_cache_control(make_backends, start_powerlb, http):
    """RFC 9213 2.1, RFC 8941: a targeted field that is not a valid Dictionary of the right types is
    ignored, and Cache-Control decides."""
    (a,) = make_backends(1)
    invalid = [b'max-age="60"', b"max-age=60.0", b"max-age=60, Public", b"max-age=60,", b"no-store=yes"]
    for number, value in enumerate(invalid):
        a.routes[b"/bad%d" % number] = origin(cache_control=b"no-store", cdn_cache_control=value)
        a.routes[b"/fallback%d" % number] = origin(cache_control=b"max-age=60", cdn_cache_control=value)
    lb = start_powerlb([a])
    for number, value in enumerate(invalid):
        for _ in range(2):
            assert (await fetch(http, lb.url + f"/bad{number}")).x_cache == b"MISS", value
        await fetch(http, lb.url + f"/fallback{number}")
        assert (await fetch(http, lb.url + f"/fallback{number}")).x_cache == b"HIT", value


@pytest_twisted.ensureDeferred
async def test_target_list_field_for_powerlb_alone_is_stripped(make_backends, start_powerlb, http):
    """RFC 9213 2.1: a target list; its first valid field wins; a field naming this cache alone is not
    forwarded, CDN-Cache-Control is."""
    (a,) = make_backends(1)
    a.routes[b"/own"] = origin(powerlb_cache_control=b"max-age=60", cdn_cache_control=b"no-store")
    a.routes[b"/cdn"] = origin(powerlb_cache_control=b"max-age=oops", cdn_cache_control=b"no-store")
    lb = start_powerlb([a], cache_targeted_header="PowerLB-Cache-Control, CDN-Cache-Control")
    first = await fetch(http, lb.url + "/own")
    hit = await fetch(http, lb.url + "/own")
    assert (first.x_cache, hit.x_cache) == (b"MISS", b"HIT")
    for response in (first, hit):
        assert response.header(b"powerlb-cache-control") is None
        assert response.header(b"cdn-cache-control") == b"no-store"
    # The own field is invalid: CDN-Cache-Control (no-store) is next in the list.
    for _ in range(2):
        assert (await fetch(http, lb.url + "/cdn")).x_cache == b"MISS"


@pytest_twisted.ensureDeferred
async def test_head_uses_stored_get_and_stats_count_results(make_backends, start_powerlb, http):
    """RFC 9111 4: HEAD is answered from a stored GET; a HEAD miss is forwarded, not stored."""
    (a,) = make_backends(1)
    a.routes[b"/h"] = origin(cache_control=b"max-age=60")
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1")
    head = await fetch(http, lb.url + "/h", method="HEAD")
    assert (head.x_cache, a.requests[-1].method) == (b"MISS", b"HEAD")
    await fetch(http, lb.url + "/h")
    head = await fetch(http, lb.url + "/h", method="HEAD")
    assert (head.x_cache, head.body, head.header(b"content-length")) == (b"HIT", b"", b"7")
    figures = await (await http.get(lb.admin_url + "/api/v1/stats")).json()
    cache: Optional[Dict[str, Any]] = figures["cache"]
    assert (cache["hits"], cache["misses"], cache["stale"], cache["revalidated"]) == (1, 2, 0, 0)
    metrics = await (await http.get(lb.admin_url + "/metrics")).text()
    assert 'powerlb_cache_results_total{result="coalesced"} 0.0' in metrics


# --- HEAD updates (RFC 9111 section 4.3.5) ------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_head_response_updates_or_invalidates_the_stored_get(make_backends, start_powerlb, http):
    """RFC 9111 4.3.5: a forwarded HEAD's 200 updates a matching stored GET, invalidates another one."""
    (a,) = make_backends(1)
    state: Dict[str, Any] = {"etag": b'"v1"', "cache_control": b"max-age=60", "seen": 0}

    def respond(request: Any) -> bytes:
        state["seen"] += 1
        request.setHeader(b"etag", state["etag"])
        request.setHeader(b"cache-control", state["cache_control"])
        request.setHeader(b"x-version", b"%d" % state["seen"])
        return b"the full body"

    a.routes[b"/h"] = respond
    lb = start_powerlb([a])
    await fetch(http, lb.url + "/h")
    state["cache_control"] = b"max-age=120"
    head = await fetch(http, lb.url + "/h", method="HEAD", cache_control=b"no-cache")
    assert (head.x_cache, a.requests[-1].method) == (b"MISS", b"HEAD")
    hit = await fetch(http, lb.url + "/h")
    assert (hit.x_cache, hit.body, hit.header(b"x-version")) == (b"HIT", b"the full body", b"2")
    assert hit.header(b"cache-control") == b"max-age=120"
    state["etag"] = b'"v2"'
    await fetch(http, lb.url + "/h", method="HEAD", cache_control=b"no-cache")
    assert (await fetch(http, lb.url + "/h", cache_control=b"only-if-cached")).code == 504
    assert lb.service.stats()["cache"]["invalidated"] == 1


# --- conditional and range misses (RFC 9111 section 4.3.2, RFC 9110 section 14) -----------------


def recording(seen: List[Any], body: bytes = b"0123456789", chunked: bool = False, **headers: bytes) -> Any:
    """A route answering ``body`` (in chunks: without Content-Length) and recording its request headers."""

    def respond(request: Any) -> Any:
        seen.append(request.requestHeaders)
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-").encode(), value)
        if not chunked:
            return body
        for start in range(0, len(body), 100):
            request.write(body[start : start + 100])
        request.finish()
        return NOT_DONE_YET

    return respond


def asked_upstream(seen: List[Any]) -> List[Any]:
    """The client conditionals and Range the backend received."""
    names = (b"if-none-match", b"if-modified-since", b"range", b"if-range")
    return [n for h in seen for n in names if h.hasHeader(n)]


@pytest_twisted.ensureDeferred
async def test_conditional_and_range_misses_store_the_whole_response(make_backends, start_powerlb, http):
    """RFC 9111 4.3.2, RFC 9110 14: a miss fetches the whole response, stores it and answers from it."""
    (a,) = make_backends(1)
    seen: List[Any] = []
    for path in (b"/inm", b"/range", b"/bad-range"):
        a.routes[path] = recording(seen, cache_control=b"max-age=60", etag=b'"x"')
    lb = start_powerlb([a])
    not_modified = await fetch(http, lb.url + "/inm", if_none_match=b'"x"')
    assert (not_modified.code, not_modified.body, not_modified.x_cache) == (304, b"", b"MISS")
    part = await fetch(http, lb.url + "/range", range=b"bytes=2-4", if_range=b'"x"')
    assert (part.code, part.body, part.header(b"content-range")) == (206, b"234", b"bytes 2-4/10")
    bad = await fetch(http, lb.url + "/bad-range", range=b"bytes=20-")
    assert (bad.code, bad.header(b"content-range")) == (416, b"bytes */10")
    for path in ("/inm", "/range", "/bad-range"):
        hit = await fetch(http, lb.url + path)
        assert (hit.code, hit.body, hit.x_cache) == (200, b"0123456789", b"HIT"), path
    assert asked_upstream(seen) == [] and len(seen) == 3


@pytest_twisted.ensureDeferred
async def test_unstored_miss_answers_conditional_and_range_from_its_head(make_backends, start_powerlb, http):
    """RFC 9111 4.3.2, RFC 9110 14: not stored: 304 from the headers, 206 with a known length, else 200."""
    (a,) = make_backends(1)
    seen: List[Any] = []
    big = bytes(range(256)) * 8
    a.routes[b"/private"] = recording(seen, cache_control=b"private", etag=b'"p"')
    a.routes[b"/big"] = recording(seen, big, cache_control=b"max-age=60", etag=b'"b"')
    a.routes[b"/big-chunked"] = recording(seen, big, chunked=True, cache_control=b"max-age=60", etag=b'"c"')
    lb = start_powerlb([a], cache_max_object=1000)
    not_modified = await fetch(http, lb.url + "/private", if_none_match=b'"p"')
    assert (not_modified.code, not_modified.body, not_modified.x_cache) == (304, b"", b"MISS")
    part = await fetch(http, lb.url + "/private", range=b"bytes=-3")
    assert (part.code, part.body, part.header(b"content-range")) == (206, b"789", b"bytes 7-9/10")
    big_part = await fetch(http, lb.url + "/big", range=b"bytes=1000-1001")
    assert (big_part.code, big_part.body, big_part.length) == (206, big[1000:1002], 2)
    chunked_part = await fetch(http, lb.url + "/big-chunked", range=b"bytes=1000-1001")
    assert (chunked_part.code, chunked_part.body) == (200, big)  # length unknown: the whole response
    chunked_304 = await fetch(http, lb.url + "/big-chunked", if_none_match=b'"c"')
    assert (chunked_304.code, chunked_304.body) == (304, b"")
    # /private was not storable (hit-for-pass): its range went upstream as asked (the backend ignored it).
    assert asked_upstream(seen) == [b"range"] and len(seen) == 5
    assert lb.service.stats()["cache"]["entries"] == 0


@pytest_twisted.ensureDeferred
async def test_coalesced_waiters_get_their_conditional_and_range_answered(make_backends, start_powerlb, http):
    """RFC 9111 4.3.2, RFC 9110 14: waiters for a conditional miss get 304/206 from the stored response."""
    (a,) = make_backends(1)
    held: List[Any] = []

    def slow(request: Any) -> Any:
        request.setHeader(b"cache-control", b"max-age=60")
        request.setHeader(b"etag", b'"s"')
        held.append(request)
        return NOT_DONE_YET

    a.routes[b"/co"] = slow
    lb = start_powerlb([a])
    url = lb.url + "/co"
    lead = defer.ensureDeferred(fetch(http, url, if_none_match=b'"s"'))
    while not held:
        await sleep(0.01)
    waiters = [
        defer.ensureDeferred(fetch(http, url, range=b"bytes=0-1")),
        defer.ensureDeferred(fetch(http, url, if_none_match=b'"other"')),
    ]
    while sum(len(f.waiters) for f in cache_layer(lb).flights.values()) < 2:
        await sleep(0.01)
    held[0].write(b"shared")
    held[0].finish()
    first, part, full = await defer.gatherResults([lead, *waiters])
    assert (first.code, first.x_cache, held[0].getHeader(b"if-none-match")) == (304, b"MISS", None)
    assert (part.code, part.body, part.x_cache) == (206, b"sh", b"COALESCED")
    assert (full.code, full.body, full.x_cache) == (200, b"shared", b"COALESCED")
    assert len(held) == 1
