"""Upgrades and tunnels without sockets: the pure decisions, the splice, and the upgrade connection."""

from __future__ import annotations

from typing import Any, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from powerlb.headers import Headers
from powerlb.http11 import ProtocolError, ResponseParser
from powerlb.stats import Counters
from powerlb.testing import RecordingSink
from powerlb.tunnel import (
    Tunnel,
    Tunnels,
    UpgradeClientFactory,
    is_upgrade,
    switch_response_headers,
    upgrade_request_headers,
)
from tests.support.upstream import Failed, Pool, Recorder

WS = [(b"host", b"x"), (b"connection", b"Upgrade"), (b"upgrade", b"websocket")]

# --- which requests are upgrades -----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "version", "headers", "expected"),
    [
        (b"GET", b"HTTP/1.1", WS, True),
        (b"GET", b"HTTP/1.1", [(b"connection", b"keep-alive, UPGRADE"), (b"upgrade", b"WebSocket")], True),
        (b"GET", b"HTTP/1.1", [(b"connection", b"upgrade"), (b"upgrade", b"websocket/13")], True),
        (b"OPTIONS", b"HTTP/1.1", [(b"connection", b"Upgrade, HTTP2-Settings"), (b"upgrade", b"h2c")], True),
        (b"GET", b"HTTP/1.1", [*WS, (b"content-length", b"0")], True),
        # not an upgrade: plain requests, their Upgrade dropped as hop-by-hop
        (b"GET", b"HTTP/1.0", WS, False),
        (b"GET", b"HTTP/2", WS, False),
        (b"GET", b"HTTP/1.1", [(b"upgrade", b"websocket")], False),
        (b"GET", b"HTTP/1.1", [(b"connection", b"upgrade")], False),
        (b"GET", b"HTTP/1.1", [(b"connection", b"upgrade"), (b"upgrade", b" , ")], False),
        (b"GET", b"HTTP/1.1", [(b"connection", b"keep-alive"), (b"upgrade", b"websocket")], False),
        (b"POST", b"HTTP/1.1", WS, False),  # WebSocket is GET only
        (b"POST", b"HTTP/1.1", [*WS[1:2], (b"upgrade", b"h2c"), (b"content-length", b"5")], False),
        (b"GET", b"HTTP/1.1", [*WS, (b"transfer-encoding", b"chunked")], False),
    ],
)
def test_is_upgrade(method: bytes, version: bytes, headers: Headers, expected: bool) -> None:
    assert is_upgrade(method, version, headers) is expected


def test_upgrade_request_headers_put_back_the_upgrade_and_its_own_fields() -> None:
    client = [
        (b"host", b"x"),
        (b"connection", b"Upgrade, HTTP2-Settings, X-Forwarded-For, keep-alive"),
        (b"upgrade", b"h2c"),
        (b"http2-settings", b"AAMAAABkAAQAAP__"),
        (b"x-forwarded-for", b"6.6.6.6"),
        (b"keep-alive", b"timeout=5"),
    ]
    forwarded = [(b"host", b"x"), (b"x-forwarded-for", b"10.0.0.1"), (b"via", b"1.1 powerlb")]
    assert upgrade_request_headers(client, forwarded) == [
        *forwarded,
        (b"connection", b"upgrade, http2-settings"),
        (b"upgrade", b"h2c"),
        (b"http2-settings", b"AAMAAABkAAQAAP__"),
    ]


def test_switch_response_headers_keep_the_upgrade_and_drop_framing() -> None:
    headers = [
        (b"upgrade", b"websocket"),
        (b"connection", b"Upgrade, X-Hop"),
        (b"x-hop", b"1"),
        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        (b"content-length", b"0"),
    ]
    assert switch_response_headers(headers) == [
        (b"connection", b"upgrade"),
        (b"upgrade", b"websocket"),
        (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        (b"via", b"1.1 powerlb"),
    ]


@given(
    st.lists(st.tuples(st.sampled_from([b"connection", b"upgrade", b"x", b"host"]), st.binary(max_size=12)))
)
def test_upgrade_request_headers_never_drop_a_forwarded_field(client: Headers) -> None:
    forwarded = [(b"host", b"x"), (b"via", b"1.1 powerlb")]
    out = upgrade_request_headers(client, forwarded)
    assert out[: len(forwarded)] == forwarded
    assert [name for name, _ in out].count(b"connection") == 1
    assert all(name not in (b"host", b"via") for name, _ in out[len(forwarded) :])


# --- the parser's 101 ---------------------------------------------------------------------


def test_an_upgrade_parser_reports_the_switch_and_the_bytes_after_it() -> None:
    recorder = Recorder()
    parser = ResponseParser(recorder, upgrade=True)
    parser.expect(False)
    parser.feed(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
    parser.feed(b"\r\n\x81\x02hi")
    assert recorder.events == [
        ("interim", 100, b"Continue", []),
        ("switched", b"Switching Protocols", [(b"upgrade", b"websocket")], b"\x81\x02hi"),
    ]
    with pytest.raises(ProtocolError):
        parser.feed(b"more")  # the parser is done: the rest goes to the tunnel


# --- the splice ---------------------------------------------------------------------------


class Channel:
    """The client-facing channel's part: a transport, and the bytes read past the request."""

    def __init__(self, early: bytes = b"") -> None:
        self.transport = StringTransport()
        self.transport.registerProducer(self, True)  # as twisted.web's channel does
        self.early = early
        self.tunnel: Optional[Tunnel] = None

    def switch_protocols(self, tunnel: Tunnel) -> bytes:
        self.tunnel = tunnel
        self.transport.unregisterProducer()
        return self.early


def spliced(early: bytes = b"", upstream_early: bytes = b"", idle: float = 10.0) -> Any:
    clock = Clock()
    channel = Channel(early)
    upstream = StringTransport()
    counters = Counters()
    tunnel = Tunnel(channel, upstream, clock, Tunnels(idle, counters))
    tunnel.start(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", upstream_early)
    return tunnel, channel.transport, upstream, clock, counters


def test_start_writes_the_head_then_passes_early_bytes_both_ways() -> None:
    _tunnel, client, upstream, _, counters = spliced(early=b"hello", upstream_early=b"welcome")
    assert client.value() == b"HTTP/1.1 101 Switching Protocols\r\n\r\nwelcome"
    assert upstream.value() == b"hello"
    assert (counters.tunnels_open, counters.tunnels_total) == (1, 1)
    assert (counters.tunnel_bytes_upstream, counters.tunnel_bytes_downstream) == (5, 7)


def test_bytes_pass_unchanged_both_ways_and_are_counted() -> None:
    tunnel, client, upstream, _, counters = spliced()
    client.clear()
    tunnel.client_data(b"\x00\xff" * 3)
    tunnel.upstream_data(b"\r\n")
    assert upstream.value() == b"\x00\xff" * 3
    assert client.value() == b"\r\n"
    assert (counters.tunnel_bytes_upstream, counters.tunnel_bytes_downstream) == (6, 2)


@pytest.mark.parametrize("slow", ["client", "upstream"])
def test_a_side_that_reads_slowly_pauses_the_other(slow: str) -> None:
    _, client, upstream, _, _ = spliced()
    writer, reader = (client, upstream) if slow == "client" else (upstream, client)
    # The slow side's transport has a full write buffer: it pauses its producer, the other side's reads.
    writer.producer.pauseProducing()
    assert reader.producerState == "paused"
    assert writer.producerState == "producing"
    writer.producer.resumeProducing()
    assert reader.producerState == "producing"


def test_start_resumes_reads_paused_before_the_switch() -> None:
    clock = Clock()
    channel = Channel()
    channel.transport.pauseProducing()  # the channel paused the client while the request was handled
    upstream = StringTransport()
    upstream.pauseProducing()  # the client was slow before the 101
    Tunnel(channel, upstream, clock, Tunnels()).start(b"head")
    assert channel.transport.producerState == upstream.producerState == "producing"


@pytest.mark.parametrize("first", ["client", "upstream"])
def test_a_close_on_either_side_closes_the_other(first: str) -> None:
    tunnel, client, upstream, clock, counters = spliced()
    if first == "client":
        tunnel.client_lost()
        closing, other_lost = upstream, tunnel.upstream_lost
    else:
        tunnel.upstream_lost()
        closing, other_lost = client, tunnel.client_lost
    assert closing.disconnecting and not closing.disconnected  # after what it was sent is written
    assert closing.producer is None
    assert tunnel.open and counters.tunnels_open == 1
    other_lost()
    assert not tunnel.open
    assert (counters.tunnels_open, counters.tunnels_total) == (0, 1)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("lost", ["client", "upstream"])
def test_bytes_for_a_closed_side_are_dropped(lost: str) -> None:
    tunnel, client, upstream, _, counters = spliced()
    client.clear()
    if lost == "client":
        tunnel.client_lost()
        tunnel.upstream_data(b"late")
    else:
        tunnel.upstream_lost()
        tunnel.client_data(b"late")
    assert client.value() == upstream.value() == b""
    assert counters.tunnel_bytes_upstream == counters.tunnel_bytes_downstream == 0


def test_idle_timeout_cuts_both_sides() -> None:
    _tunnel, client, upstream, clock, _ = spliced(idle=10)
    clock.advance(9.9)
    assert not client.disconnecting and not upstream.disconnecting
    clock.advance(0.1)
    assert client.disconnected and upstream.disconnected  # aborted: nothing more is written


@pytest.mark.parametrize("direction", ["client_data", "upstream_data"])
def test_traffic_either_way_keeps_a_tunnel_open(direction: str) -> None:
    tunnel, client, upstream, clock, _ = spliced(idle=10)
    for _ in range(5):
        clock.advance(6)
        getattr(tunnel, direction)(b"x")
    assert not client.disconnecting and not upstream.disconnecting
    assert len(clock.getDelayedCalls()) == 1  # one timer, re-armed lazily
    clock.advance(10)
    assert client.disconnected and upstream.disconnected


def test_idle_timeout_cuts_a_side_still_flushing_after_a_close() -> None:
    tunnel, client, _, clock, _ = spliced(idle=10)
    tunnel.upstream_lost()  # the client is asked to close, but never reads what it was sent
    clock.advance(10)
    assert client.disconnected


# --- the upgrade's backend connection ---------------------------------------------------


def upgrade_exchange(upstream_reply: bytes) -> Any:
    pool = Pool(MemoryReactorClock())
    channel = Channel()
    tunnels = Tunnels(30, Counters())
    factory = UpgradeClientFactory(pool.factory, channel, tunnels)
    sink = RecordingSink()
    exchange = factory.request(b"GET", b"/ws", WS, b"", sink, idempotent=True)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value().startswith(b"GET /ws HTTP/1.1\r\n")
    proto.dataReceived(upstream_reply)
    return proto, transport, channel, sink, exchange, tunnels.counters


def test_a_101_splices_the_backend_connection_to_the_client() -> None:
    proto, transport, channel, sink, exchange, counters = upgrade_exchange(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nfirst"
    )
    expected_headers = [(b"connection", b"upgrade"), (b"upgrade", b"websocket"), (b"via", b"1.1 powerlb")]
    assert sink.events == [("head", 101, b"Switching Protocols", expected_headers)]
    assert channel.transport.value() == (
        b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: websocket\r\n"
        b"via: 1.1 powerlb\r\n\r\nfirst"
    )
    assert channel.tunnel is proto.tunnel is not None
    proto.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")  # no longer HTTP: passed on as it is
    assert channel.transport.value().endswith(b"firstHTTP/1.1 200 OK\r\n\r\n")
    exchange.abort()  # the client's request is abandoned as its connection closes
    assert not transport.disconnecting  # the tunnel closes it, after what it was sent
    proto.tunnel.client_lost()
    assert transport.disconnecting and not transport.disconnected
    proto.connectionLost(Failure(ConnectionDone()))
    assert counters.tunnels_open == 0 and counters.tunnels_total == 1


def test_an_answer_other_than_101_is_relayed_and_the_connection_closed() -> None:
    _proto, transport, channel, sink, _, counters = upgrade_exchange(
        b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno"
    )
    assert sink.events == [
        ("head", 426, b"Upgrade Required", [(b"content-length", b"2")]),
        ("body", b"no"),
        ("end",),
    ]
    assert transport.disconnecting  # never pooled
    assert channel.tunnel is None and channel.transport.value() == b""
    assert counters.tunnels_total == 0


def test_a_101_without_upgrade_field_is_a_502() -> None:
    _proto, transport, channel, sink, _, _ = upgrade_exchange(b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert sink.events == [Failed(502, False)]
    assert transport.disconnected
    assert channel.tunnel is None


def test_an_upgrade_client_takes_its_pools_settings_and_never_pools() -> None:
    pool = Pool(connect_timeout=1.5, response_timeout=7, idle_timeout=9, tls=None)
    factory = Tunnels().client_for(pool.factory, Channel())
    assert (factory.backend, factory.connect_timeout, factory.response_timeout, factory.idle_timeout) == (
        pool.backend,
        1.5,
        7,
        9,
    )
    assert factory.max_idle == 0 and factory.tls is None
