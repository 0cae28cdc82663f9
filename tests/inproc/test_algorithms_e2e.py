"""End to end over real sockets: consistent hashing on a key, bounded loads, sticky sessions by cookie."""

from __future__ import annotations

import math
from collections import Counter
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Dict, List

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.server import NOT_DONE_YET, Request

from powerlb.balancing import ConsistentHash
from powerlb.sticky import backend_id
from tests.support.inproc import fetch, wait_for


@pytest.fixture
def client() -> Any:
    """A treq client with its own pool that keeps no cookies: each request sends exactly the ones given."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    no_cookies = CookieJar(DefaultCookiePolicy(allowed_domains=[]))
    yield treq.client.HTTPClient(Agent(reactor, pool=pool), cookiejar=no_cookies)
    pytest_twisted.blockon(pool.closeCachedConnections())


def expected_backend(lb: Any, key: bytes) -> str:
    """The URL of the backend ``key`` hashes to among the running powerlb's backends (loads aside)."""
    return ConsistentHash(lb.service.backends).choose(key).url


# --- consistent hashing on a key --------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_uri_key_sends_one_path_to_one_backend_and_spreads_paths(make_backends, start_powerlb, client):
    backends = make_backends(4)
    by_name = {b.name: b for b in backends}
    lb = start_powerlb(backends, algorithm="consistent-hash", hash_key="uri", cache_size=0)
    seen: Dict[str, str] = {}
    for number in range(24):
        path = f"/item/{number}?v=1"
        answers = {(await fetch(client, lb.url + path)).backend for _ in range(3)}
        assert len(answers) == 1, (path, answers)
        seen[path] = answers.pop()
        assert by_name[seen[path]].url == expected_backend(lb, path.encode())
    assert len(set(seen.values())) >= 3  # 24 paths over 4 backends


@pytest_twisted.ensureDeferred
async def test_header_key_keeps_each_user_on_one_backend(make_backends, start_powerlb, client):
    backends = make_backends(3)
    by_name = {b.name: b for b in backends}
    lb = start_powerlb(backends, algorithm="consistent-hash", hash_key="header:X-User", cache_size=0)
    users: Dict[bytes, str] = {}
    for number in range(15):
        user = b"user-%d" % number
        answers = {(await fetch(client, lb.url + f"/p{i}", {b"x-user": user})).backend for i in range(3)}
        assert len(answers) == 1
        users[user] = answers.pop()
        assert by_name[users[user]].url == expected_backend(lb, user)
    assert len(set(users.values())) >= 2
    # without the header the client address is the key: every request from here goes to one backend
    anonymous = {(await fetch(client, lb.url + f"/p{i}")).backend for i in range(4)}
    assert [by_name[name].url for name in anonymous] == [expected_backend(lb, b"127.0.0.1")]


@pytest_twisted.ensureDeferred
async def test_cookie_key_routes_on_the_cookie_and_forwards_it(make_backends, start_powerlb, client):
    backends = make_backends(3)
    by_name = {b.name: b for b in backends}
    lb = start_powerlb(backends, algorithm="consistent-hash", hash_key="cookie:sid", cache_size=0)
    for number in range(10):
        sid = b"s%d" % number
        reply = await fetch(client, lb.url + "/", {b"cookie": b"theme=dark; sid=" + sid})
        assert by_name[reply.backend].url == expected_backend(lb, sid)
        assert reply.set_cookie == []  # no sticky cookie configured
        forwarded = by_name[reply.backend].requests[-1].header(b"cookie")
        assert forwarded == [b"theme=dark; sid=" + sid]


def hold(backend: Any, held: List[Request]) -> None:
    """Make ``backend`` keep its /hot requests open in ``held``."""

    def handler(request: Request) -> Any:
        held.append(request)
        return NOT_DONE_YET

    backend.routes[b"/hot"] = handler


@pytest.mark.parametrize(("factor", "most"), [(1.25, math.ceil(1.25 * 8 / 4)), (0, 8)])
@pytest_twisted.ensureDeferred
async def test_hot_key_is_spread_by_the_balance_factor(make_backends, start_powerlb, client, factor, most):
    backends = make_backends(4)
    held: List[Request] = []
    for backend in backends:
        hold(backend, held)
    lb = start_powerlb(
        backends, algorithm="consistent-hash", hash_key="uri", hash_balance_factor=factor, cache_size=0
    )
    pending = [client.get(lb.url + "/hot") for _ in range(8)]
    await wait_for(lambda: len(held) == 8)
    loads = {b.url: b.in_flight for b in lb.service.backends}
    assert sum(loads.values()) == 8
    # bounded: the key's backend takes no more than ceil(1.25 * 8 / 4), the rest spills; unbounded: all 8
    assert max(loads.values()) == loads[expected_backend(lb, b"/hot")] == most
    assert Counter(loads.values())[0] == (1 if factor else 3)
    for request in held:
        request.finish()
    for d in pending:
        await (await d).content()
    assert [b.in_flight for b in lb.service.backends] == [0, 0, 0, 0]


# --- sticky sessions ------------------------------------------------------------------------


def cookie_of(reply: Any, name: bytes = b"lb") -> bytes:
    """The value ``reply`` sets for cookie ``name`` (it must set exactly one cookie)."""
    (header,) = reply.set_cookie
    pair, _, attributes = header.partition(b";")
    assert attributes == b" Path=/; HttpOnly; SameSite=Lax"
    cookie_name, _, value = pair.partition(b"=")
    assert cookie_name == name
    return value


@pytest_twisted.ensureDeferred
async def test_sticky_cookie_is_set_honoured_stripped_and_reissued_when_its_backend_stops(
    make_backends, start_powerlb, client
):
    backends = make_backends(3)
    by_name = {b.name: b for b in backends}
    lb = start_powerlb(backends, algorithm="round-robin", sticky_cookie="lb", cache_size=0)
    first = await fetch(client, lb.url + "/")
    home = by_name[first.backend]
    assert cookie_of(first) == backend_id(home.url)
    assert home.url.encode().split(b":")[-1] not in cookie_of(first)
    sent = {b"cookie": b"theme=dark; lb=" + cookie_of(first) + b"; x=1"}
    for number in range(6):  # round-robin would rotate; the cookie holds them on home
        reply = await fetch(client, lb.url + f"/page/{number}", sent)
        assert reply.backend == home.name
        assert reply.set_cookie == []  # the client already has it
        assert home.requests[-1].header(b"cookie") == [b"theme=dark; x=1"]  # ours stays out of upstream

    await home.stop()  # a crashed backend: the retry goes elsewhere and the cookie follows
    moved = await fetch(client, lb.url + "/after", sent)
    assert moved.code == 200 and moved.backend != home.name
    assert cookie_of(moved) == backend_id(by_name[moved.backend].url)
    again = await fetch(client, lb.url + "/again", {b"cookie": b"lb=" + cookie_of(moved)})
    assert (again.backend, again.set_cookie) == (moved.backend, [])


@pytest_twisted.ensureDeferred
async def test_draining_backend_keeps_its_sticky_clients(make_backends, start_powerlb, client):
    backends = make_backends(2)
    lb = start_powerlb(backends, sticky_cookie="lb", cache_size=0)
    first = await fetch(client, lb.url + "/")
    home = next(b for b in lb.service.backends if backend_id(b.url) == cookie_of(first))
    home.draining = True
    sticky = {b"cookie": b"lb=" + cookie_of(first)}
    assert {(await fetch(client, lb.url + "/", sticky)).backend for _ in range(4)} == {first.backend}
    fresh = {(await fetch(client, lb.url + "/")).backend for _ in range(4)}
    assert first.backend not in fresh


def cacheable(request: Request) -> bytes:
    request.setHeader(b"cache-control", b"max-age=60")
    return b"stored body"


@pytest_twisted.ensureDeferred
async def test_sticky_cookie_never_enters_the_cache(make_backends, start_powerlb, client):
    backends = make_backends(2)
    for backend in backends:
        backend.routes[b"/c"] = cacheable
    lb = start_powerlb(backends, sticky_cookie="lb")
    miss = await fetch(client, lb.url + "/c")
    assert (miss.x_cache, miss.body) == (b"MISS", b"stored body")
    assert cookie_of(miss)  # the client that went upstream gets its cookie
    for headers in (None, {b"cookie": b"lb=" + cookie_of(miss)}, {b"cookie": b"lb=000000000000"}):
        hit = await fetch(client, lb.url + "/c", headers)
        assert (hit.x_cache, hit.body, hit.set_cookie) == (b"HIT", b"stored body", [])
    assert sum(b.served() for b in backends) == 1
