"""Upgrades (WebSocket and any other ``Upgrade``): the request that asks to switch protocols, and the
tunnel its connection becomes once the backend agrees.

An HTTP/1.1 request with ``Connection: upgrade`` and an ``Upgrade`` field
(:func:`is_upgrade`) goes upstream with both fields (:func:`upgrade_request_headers`)
on a fresh backend connection that is never pooled: an :class:`UpgradeClientFactory`
per request, with the time limits and TLS settings of the backend's pool. An
answer other than ``101`` is relayed like any other response, and that
connection closed after it. A ``101`` goes to the client
(:func:`switch_response_headers`), and from then on the client connection and
the backend connection are a :class:`Tunnel`: bytes pass unchanged both ways,
a slow reader on either side pauses the other, a close on either side closes
the other, and ``tunnel-idle-timeout`` without a byte either way cuts both.

The request counts in its backend's in-flight requests until the tunnel
closes, and it is never retried once the ``101`` came (the dispatch has
committed). Upgrades never touch the cache. The client-facing channel's part
is one method, ``switch_protocols(tunnel) -> bytes`` (see
:meth:`powerlb.server.ProxyChannel.switch_protocols`).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from powerlb.errors import UpstreamError
from powerlb.headers import (
    HOP_BY_HOP,
    Headers,
    connection_tokens,
    forward_response_headers,
    get_all,
    get_first,
)
from powerlb.http11 import IUpgradeEvents, ResponseParser, serialize_interim
from powerlb.stats import Counters
from powerlb.upstream import ProxyClientFactory, UpstreamConnection

#: Seconds a tunnel may pass no byte either way before both connections are closed.
DEFAULT_IDLE_TIMEOUT = 300.0

#: Fields a client may not carry upstream by naming them in ``Connection``.
_NEVER_KEPT = HOP_BY_HOP | {b"host", b"content-length"}


def is_upgrade(method: bytes, version: bytes, headers: Headers) -> bool:
    """Whether a client request asks for a protocol switch that powerlb passes on to a backend.

    HTTP/1.1 only (an HTTP/1.0 ``Upgrade`` is ignored, RFC 9110 section 7.8;
    HTTP/2 has none), ``Connection`` naming ``upgrade``, an ``Upgrade`` field
    with a protocol, no request body, and for WebSocket the ``GET`` RFC 6455
    section 4.1 requires. Any other request is a plain one, its ``Upgrade``
    dropped as hop-by-hop.
    """
    if version != b"HTTP/1.1":
        return False
    protocols = [p.strip().lower() for value in get_all(headers, b"upgrade") for p in value.split(b",")]
    if not any(protocols) or b"upgrade" not in connection_tokens(headers):
        return False
    length = get_first(headers, b"content-length")
    if get_first(headers, b"transfer-encoding") is not None or length not in (None, b"0"):
        return False
    return method == b"GET" or not any(p.startswith(b"websocket") for p in protocols)


def upgrade_request_headers(client: Headers, forwarded: Headers) -> Headers:
    """The headers of an upgrade request as sent upstream.

    ``forwarded`` are the request's headers as any request sends them
    (hop-by-hop fields dropped, forwarding fields added); ``Connection:
    upgrade``, the ``Upgrade`` fields and the other fields the client's
    ``Connection`` names (an upgrade's own, e.g. ``HTTP2-Settings``) are put
    back. Hop-by-hop and forwarding fields stay powerlb's.
    """
    replaced = {name for name, _ in forwarded}
    named = sorted(connection_tokens(client) - _NEVER_KEPT - replaced)
    kept = [(name, value) for name, value in client if name == b"upgrade" or name in named]
    return [*forwarded, (b"connection", b", ".join([b"upgrade", *named])), *kept]


def switch_response_headers(headers: Headers) -> Headers:
    """The headers of a backend's ``101`` as the client gets them.

    ``Connection: upgrade`` and the ``Upgrade`` fields are kept, the other
    hop-by-hop fields dropped as for any response, ``Via`` added, and framing
    fields dropped (a ``101`` has no body, RFC 9110 section 8.6).
    """
    end_to_end = [(k, v) for k, v in forward_response_headers(headers) if k != b"content-length"]
    upgrade = [(b"upgrade", value) for value in get_all(headers, b"upgrade")]
    return [(b"connection", b"upgrade"), *upgrade, *end_to_end]


class Tunnels:
    """What the tunnels of one powerlb share: their idle timeout and the counters they add to.

    ``counters.tunnels_open`` and ``tunnels_total`` count tunnels,
    ``tunnel_bytes_upstream`` and ``tunnel_bytes_downstream`` the bytes they
    carried from clients to backends and back.
    """

    def __init__(
        self, idle_timeout: float = DEFAULT_IDLE_TIMEOUT, counters: Optional[Counters] = None
    ) -> None:
        self.idle_timeout = idle_timeout
        self.counters = Counters() if counters is None else counters

    def client_for(self, pool: ProxyClientFactory, channel: Any) -> UpgradeClientFactory:
        """A fresh client for one upgrade request of ``channel`` to ``pool``'s backend."""
        return UpgradeClientFactory(pool, channel, self)


@implementer(IPushProducer)
class _Reads:
    """The reads of one connection of a tunnel, as the producer of the other connection's writes."""

    __slots__ = ("transport",)

    def __init__(self, transport: Any) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """The writing connection is gone; the tunnel hears of it and closes this one itself."""


class Tunnel:
    """A client connection and a backend connection spliced after a ``101``: bytes pass unchanged both ways.

    Each connection's transport has the other connection's reads as its
    producer, so a side that reads slowly pauses the other and nothing piles
    up in powerlb. When either connection closes, the other is closed once
    what was sent to it is written (a half-close counts as a close). After
    ``idle_timeout`` seconds without a byte either way both are cut; one
    timer does it, re-armed on expiry for the time left. ``client`` is the
    client-facing ``channel`` (its ``transport`` and ``switch_protocols``),
    ``upstream`` the backend connection's transport.
    """

    __slots__ = (
        "_client_open",
        "_last",
        "_timer",
        "_upstream_open",
        "channel",
        "client",
        "clock",
        "counters",
        "idle_timeout",
        "upstream",
    )

    def __init__(self, channel: Any, upstream: Any, clock: IReactorTime, tunnels: Tunnels) -> None:
        self.channel = channel
        self.client = channel.transport
        self.upstream = upstream
        self.clock = clock
        self.idle_timeout = tunnels.idle_timeout
        self.counters = tunnels.counters
        self._client_open = self._upstream_open = True
        self._last = clock.seconds()
        self._timer: Any = None

    def start(self, head: bytes, upstream_early: bytes = b"") -> None:
        """Write the ``101`` ``head`` to the client, then splice; ``upstream_early`` are the backend's bytes
        that came with its head."""
        client_early = self.channel.switch_protocols(self)
        counters = self.counters
        counters.tunnels_open += 1
        counters.tunnels_total += 1
        client, upstream = self.client, self.upstream
        client.write(head)
        client.registerProducer(_Reads(upstream), True)
        upstream.registerProducer(_Reads(client), True)
        client.resumeProducing()
        upstream.resumeProducing()
        self._timer = self.clock.callLater(self.idle_timeout, self._check_idle)
        if upstream_early:
            self.upstream_data(upstream_early)
        if client_early:
            self.client_data(client_early)

    @property
    def open(self) -> bool:
        """True until both connections are closed."""
        return self._client_open or self._upstream_open

    def client_data(self, data: bytes) -> None:
        """Bytes from the client: on to the backend."""
        if self._upstream_open:
            self._last = self.clock.seconds()
            self.counters.tunnel_bytes_upstream += len(data)
            self.upstream.write(data)

    def upstream_data(self, data: bytes) -> None:
        """Bytes from the backend: on to the client."""
        if self._client_open:
            self._last = self.clock.seconds()
            self.counters.tunnel_bytes_downstream += len(data)
            self.client.write(data)

    def client_lost(self) -> None:
        """The client connection closed: close the backend's once what it was sent is written."""
        if not self._client_open:
            return
        self._client_open = False
        if self._upstream_open:
            self.upstream.unregisterProducer()
            self.upstream.loseConnection()
        self._closed_one()

    def upstream_lost(self) -> None:
        """The backend connection closed: close the client's once what it was sent is written."""
        if not self._upstream_open:
            return
        self._upstream_open = False
        if self._client_open:
            self.client.unregisterProducer()
            self.client.loseConnection()
        self._closed_one()

    def _closed_one(self) -> None:
        if self.open:
            return
        self.counters.tunnels_open -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _check_idle(self) -> None:
        """Cut both connections after ``idle_timeout`` seconds with no byte, else wait for the time left."""
        self._timer = None
        left = self._last + self.idle_timeout - self.clock.seconds()
        if left > 0:
            self._timer = self.clock.callLater(left, self._check_idle)
            return
        for is_open, transport in ((self._client_open, self.client), (self._upstream_open, self.upstream)):
            if is_open:
                transport.abortConnection()


@implementer(IUpgradeEvents)
class UpgradeConnection(UpstreamConnection):
    """The backend connection of one upgrade request: an :class:`~powerlb.upstream.UpstreamConnection`
    whose parser takes a ``101``, after which it is the backend end of a :class:`Tunnel`."""

    def __init__(self, factory: UpgradeClientFactory) -> None:
        super().__init__(factory)
        self.parser = ResponseParser(self, upgrade=True)
        self.tunnel: Optional[Tunnel] = None

    def response_switched(self, reason: bytes, headers: Headers, rest: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            return  # aborted by its sink while this read was being parsed
        if get_first(headers, b"upgrade") is None:
            self._fail(UpstreamError("backend answered 101 without an Upgrade field"))
            self.transport.abortConnection()
            return
        self._cancel_timer()
        self.exchange = None
        exchange.response_time = self._seconds() - self.sent_at
        client_headers = switch_response_headers(headers)
        # The dispatch commits (no retry from now on) and the client's request is answered.
        assert exchange.sink is not None  # active: on the connection
        exchange.sink.head_received(101, reason, client_headers)
        if not exchange.active:
            self.transport.abortConnection()
            return
        factory = self.factory
        self.tunnel = Tunnel(factory.channel, self.transport, factory.reactor, factory.tunnels)
        self.tunnel.start(serialize_interim(101, reason, client_headers), rest)

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_data(data)
        else:
            super().dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.tunnel is not None:
            self.tunnel.upstream_lost()
        else:
            super().connectionLost(reason)

    def abort(self) -> None:
        """Drop the connection at once, unless it is a tunnel's, which closes with the client's."""
        if self.tunnel is None:
            super().abort()


class UpgradeClientFactory(ProxyClientFactory):
    """A client for one upgrade request, never pooled, with the settings (time limits, TLS) of the backend's
    pool ``pool``; ``channel`` is the client connection a ``101`` turns into a tunnel."""

    protocol = UpgradeConnection

    def __init__(self, pool: ProxyClientFactory, channel: Any, tunnels: Tunnels) -> None:
        super().__init__(
            pool.backend,
            pool.reactor,
            connect_timeout=pool.connect_timeout,
            response_timeout=pool.response_timeout,
            idle_timeout=pool.idle_timeout,
            max_idle=0,
            tls=pool.tls,
        )
        self.channel = channel
        self.tunnels = tunnels
