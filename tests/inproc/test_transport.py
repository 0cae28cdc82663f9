"""powerlb.transport.write_now over real TCP connections on 127.0.0.1: sent at once when nothing is
queued, queued behind earlier bytes otherwise, the remainder of a partial send queued, and anything it
cannot send on directly handed to the transport's own write."""

from __future__ import annotations

import socket
from typing import Any, List, Tuple

import pytest_twisted
from twisted.internet import defer, protocol, reactor
from twisted.internet.testing import StringTransport

from powerlb.transport import can_write_now, write_now
from tests.support.inproc import wait_for


class _Collect(protocol.Protocol):
    """The receiving end: keeps every byte."""

    def __init__(self) -> None:
        self.received: List[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    @property
    def data(self) -> bytes:
        return b"".join(self.received)


class _Server(protocol.Protocol):
    """The sending end: its transport is the one written to."""


async def _pair() -> Tuple[Any, _Collect, Any]:
    """(the server side's transport, the client protocol, the listening port)."""
    accepted: defer.Deferred = defer.Deferred()

    class Factory(protocol.Factory):
        def buildProtocol(self, addr: Any) -> protocol.Protocol:
            server = _Server()
            reactor.callLater(0, accepted.callback, server)
            return server

    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    client = _Collect()
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port.getHost().port)
    server = await accepted
    return server.transport, client, port


async def _close(transport: Any, client: _Collect, port: Any) -> None:
    transport.loseConnection()
    client.transport.loseConnection()
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_sent_at_once_when_nothing_is_queued() -> None:
    transport, client, port = await _pair()
    assert can_write_now(transport)
    write_now(transport, b"hello")
    assert transport._tempDataLen == 0 and not transport.dataBuffer  # nothing left for the reactor
    write_now(transport, b", ", b"", b"world")  # pieces: one sendmsg
    assert transport._tempDataLen == 0 and not transport.dataBuffer
    await wait_for(lambda: client.data == b"hello, world")
    await _close(transport, client, port)


@pytest_twisted.ensureDeferred
async def test_queued_behind_bytes_written_before() -> None:
    transport, client, port = await _pair()
    transport.write(b"first,")
    assert not can_write_now(transport)
    write_now(transport, b"second")
    assert transport._tempDataLen == len(b"first,second")  # both wait for the reactor, in order
    await wait_for(lambda: client.data == b"first,second")
    await _close(transport, client, port)


@pytest_twisted.ensureDeferred
async def test_what_the_socket_does_not_take_is_queued() -> None:
    transport, client, port = await _pair()
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    client.transport.pauseProducing()  # the receiver reads nothing yet: the send buffers fill
    data = bytes(range(256)) * 16384  # 4 MiB, more than loopback buffers take at once
    write_now(transport, b"head,", data, b",tail")  # in one sendmsg, of which only a part is taken
    assert 0 < transport._tempDataLen < len(data)  # part went at once, the rest waits its turn
    write_now(transport, b"end")
    client.transport.resumeProducing()
    await wait_for(lambda: len(client.data) == len(data) + 13, timeout=20)
    assert client.data == b"head," + data + b",tail" + b"end"
    await _close(transport, client, port)


@pytest_twisted.ensureDeferred
async def test_a_closing_connection_takes_the_transports_own_way() -> None:
    transport, client, port = await _pair()
    transport.loseConnection()
    assert not can_write_now(transport)
    write_now(transport, b"late")  # queued ahead of the close, as transport.write does
    await wait_for(lambda: client.data == b"late")
    client.transport.loseConnection()
    await port.stopListening()


def test_a_transport_that_is_not_plain_tcp_is_written_as_usual() -> None:
    transport = StringTransport()
    assert not can_write_now(transport)
    write_now(transport, b"data")
    assert transport.value() == b"data"
