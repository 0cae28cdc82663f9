"""The client channel's short way for plain requests: parsed once, its request made without
twisted.web's constructors, one head block, no timer each.

And the design card: :class:`~powerlb.proxy.ProxyResource` still serves
when mounted in an ordinary twisted.web ``Site`` of someone else's
application (twisted.web's own request and channel, none of powerlb's).
"""

from __future__ import annotations

import gc
import platform
import weakref
from typing import Any, List

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyChannel

from powerlb.server import ProxyRequest
from tests.support.inproc import headers_of, origin, raw, sleep, wait_for
from tests.support.interim import RELAYED, hinting, request


class _CountingCallLater:
    """Wraps a channel's ``callLater`` to count the timers it makes."""

    def __init__(self, call_later: Any) -> None:
        self.call_later = call_later
        self.made = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.made += 1
        return self.call_later(*args, **kwargs)


class _OneByOne(protocol.Protocol):
    """Sends ``request`` ``count`` times on one connection, each once the response before is complete."""

    def __init__(self, request: bytes, count: int) -> None:
        self.request = request
        self.left = count
        self.buffer = b""
        self.responses: List[bytes] = []
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        head, _, body = self.buffer.partition(b"\r\n\r\n")
        if not _ or len(body) < int(headers_of(head + b"\r\n\r\n")[1][b"content-length"]):
            return
        self.responses.append(self.buffer)
        self.buffer = b""
        self.left -= 1
        if self.left:
            self.transport.write(self.request)
        else:
            self.transport.loseConnection()
            self.done.callback(self.responses)


@pytest_twisted.ensureDeferred
async def test_plain_keep_alive_requests_are_parsed_once_and_make_no_timer_each(make_backends, start_powerlb):
    (a,) = make_backends(1)
    lb = start_powerlb([a])
    site = lb.service.proxy_listener.factory
    counters: list = []
    build = site.buildProtocol

    def counting_build(addr: Any) -> Any:
        channel = build(addr)
        channel.callLater = counter = _CountingCallLater(channel.callLater)
        counters.append(counter)
        return channel

    site.buildProtocol = counting_build
    plain = b"GET /p HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n"
    # One connection, ten plain requests one after the other (each read holds exactly one).
    client = _OneByOne(plain, 10)
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", lb.port)
    responses = await client.done
    assert [headers_of(r)[0] for r in responses] == [200] * 10
    assert all(b"\r\nX-Cache: MISS\r\n" in r for r in responses)  # powerlb's own head block
    assert a.served() == 10
    # The connection made its idle timer once, and none per request.
    assert [counter.made for counter in counters] == [1]
    assert [r.header(b"accept") for r in a.requests if r.uri == b"/p"] == [[b"*/*"]] * 10


class _Closing(protocol.Protocol):
    """Keeps what it reads, and notes when the connection closes."""

    def __init__(self) -> None:
        self.data = b""
        self.closed = False

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Any = None) -> None:
        self.closed = True


@pytest_twisted.ensureDeferred
async def test_idle_time_counts_from_the_last_plain_request_or_fast_hit(make_backends, start_powerlb):
    """The idle timer keeps running through plain requests and fast hits, which only note the time:
    when it fires it waits for the rest, so a connection is closed ``client_timeout`` after its last
    answer, not after its first request."""
    (a,) = make_backends(1)
    a.routes[b"/c"] = origin(b"stored", cache_control=b"max-age=60")
    lb = start_powerlb([a], client_timeout=1.0)
    client = _Closing()
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", lb.port)
    for target in (b"/p", b"/c", b"/c"):  # a plain miss, a plain miss stored, a fast hit
        client.transport.write(b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % target)
        await sleep(0.6)
    assert client.data.count(b"HTTP/1.1 200 ") == 3 and client.data.count(b"X-Cache: HIT") == 1
    assert not client.closed  # 1.8 s after the first request, 0.6 s after the last answer
    await wait_for(lambda: client.closed, timeout=5.0)


@pytest.mark.skipif(
    platform.python_implementation() != "CPython", reason="only CPython frees by reference counting"
)
@pytest_twisted.ensureDeferred
async def test_answered_requests_leave_no_cycle_for_the_garbage_collector(make_backends, start_powerlb):
    """A request, its responder and its dispatch are freed by reference counting as the response
    ends: with the collector off, none of them outlives its answer (a cycle left per request made
    the collector run every few dozen requests)."""
    (a,) = make_backends(1)
    a.routes[b"/c"] = origin(b"stored", cache_control=b"max-age=60")
    lb = start_powerlb([a])
    site = lb.service.proxy_listener.factory
    made: List[weakref.ref] = []

    class Tracked(site.requestFactory):  # type: ignore[name-defined,misc]
        """The site's requests, each noted as it is made (either way)."""

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.append(weakref.ref(self))

        @classmethod
        def for_plain(cls, channel: Any) -> Any:
            request = super().for_plain(channel)
            made.append(weakref.ref(request))
            return request

    site.requestFactory = Tracked
    requests = [
        b"GET /p HTTP/1.1\r\nHost: x\r\n\r\n",  # plain, passed
        b"GET /c HTTP/1.1\r\nHost: x\r\n\r\n",  # plain, stored
        b"GET /p HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",  # twisted.web's way
        b"POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",  # a body
    ]
    gc.collect()
    gc.disable()
    try:
        for each in requests:
            client = _OneByOne(each, 2)
            await protocol.ClientCreator(reactor, lambda c=client: c).connectTCP("127.0.0.1", lb.port)
            responses = await client.done
            assert [headers_of(r)[0] for r in responses] == [200, 200]
        await sleep(0.05)
        assert len(made) == 7  # the second GET /c was a hit, answered with no request object
        assert [ref() for ref in made] == [None] * 7
    finally:
        gc.enable()


@pytest_twisted.ensureDeferred
async def test_proxy_resource_serves_inside_an_ordinary_site(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    a.routes[b"/app/hints"] = hinting(b"no-store")
    lb = start_powerlb([a])
    root = Resource()
    root.putChild(b"app", lb.service.proxy_listener.factory.resource)
    site = Site(root)
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}"
        response = await http.get(url + "/app/x?y=1")
        assert response.code == 200
        assert (await response.json())["uri"] == "/app/x?y=1"
        assert response.headers.getRawHeaders("x-cache") == ["MISS"]
        posted = await http.post(url + "/app/up", data=b"u" * 5000)
        assert posted.code == 200
        await posted.content()
        assert a.requests[-1].body == b"u" * 5000
        # Interim responses pass through twisted.web's own channel too.
        answer = await raw(port.getHost().port, request(b"GET", b"/app/hints"))
        assert answer.startswith(RELAYED + b"HTTP/1.1 200 OK\r\n"), answer
    finally:
        await defer.maybeDeferred(port.stopListening)


def test_a_plain_request_is_made_with_what_twisted_webs_constructors_set() -> None:
    """ProxyRequest.for_plain skips twisted.web's constructors: it sets the same attributes, to the
    same values, as they do (a Twisted that sets more fails here, not on a request)."""
    channel = DummyChannel()
    usual = ProxyRequest(channel)
    plain = ProxyRequest.for_plain(channel)  # type: ignore[arg-type]  # twisted.web's test channel
    assert vars(plain).keys() == vars(usual).keys()
    for name, value in vars(usual).items():
        if isinstance(value, Headers):
            assert list(getattr(plain, name).getAllRawHeaders()) == list(value.getAllRawHeaders()) == []
            assert getattr(plain, name) is not value
        else:
            assert getattr(plain, name) == value, name
    for name in ProxyRequest.__slots__:
        assert getattr(plain, name) == getattr(usual, name), name
