"""powerlb.eventloop.DirectEPollReactor, a private instance (never installed) driven over real TCP
connections on 127.0.0.1: events reach their handlers, a handler that raises loses its connection
and the others go on, and an error that escapes the event's handling is logged, not fatal.

Which reactor twistd, lb.tac and the workers run on: tests/process/test_running.py."""

from __future__ import annotations

import os
from typing import Any, Iterator, List

import pytest
from twisted.internet import protocol
from twisted.logger import globalLogPublisher

from powerlb import eventloop

pytestmark = pytest.mark.skipif(eventloop.EPollReactor is None, reason="no epoll on this platform")

#: Most reactor iterations a test waits for a condition (each waits at most 10 ms for an event).
MAX_ITERATIONS = 500


@pytest.fixture
def loop() -> Iterator[Any]:
    """A DirectEPollReactor of the test's own, closed afterwards (its waker and epoll object)."""
    reactor = eventloop.DirectEPollReactor()
    yield reactor
    reactor.disconnectAll()
    reactor.removeReader(reactor.waker)
    reactor.waker.connectionLost(None)
    reactor._poller.close()


@pytest.fixture
def logged() -> Iterator[List[dict]]:
    """The log events emitted during the test (legacy ``log.err`` ones carry ``failure`` and ``why``)."""
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def run_until(reactor: Any, condition: Any) -> None:
    for _ in range(MAX_ITERATIONS):
        if condition():
            return
        reactor.iterate(0.01)
    pytest.fail("condition not met in time")


class Echo(protocol.Protocol):
    """Sends back what it reads; ``boom`` raises instead."""

    def dataReceived(self, data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("handler failed")
        self.transport.write(data)


class Client(protocol.Protocol):
    """Keeps what it reads and whether it was disconnected."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True


def connect(reactor: Any, port: int) -> Client:
    client = Client()
    factory = protocol.ClientFactory()
    factory.buildProtocol = lambda addr: client  # type: ignore[method-assign]
    reactor.connectTCP("127.0.0.1", port, factory)
    run_until(reactor, lambda: client.transport is not None and client.transport.connected)
    return client


def listen(reactor: Any) -> int:
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
    return int(port.getHost().port)


def test_reads_and_writes_reach_their_handlers(loop: Any) -> None:
    port = listen(loop)
    clients = [connect(loop, port) for _ in range(3)]
    for index, client in enumerate(clients):
        client.transport.write(b"ping %d" % index)
    run_until(loop, lambda: all(client.received for client in clients))
    assert [client.received for client in clients] == [b"ping 0", b"ping 1", b"ping 2"]


def test_a_failing_handler_loses_its_connection_and_the_others_go_on(loop: Any, logged: List[dict]) -> None:
    port = listen(loop)
    failing, other = connect(loop, port), connect(loop, port)
    failing.transport.write(b"boom")
    run_until(loop, lambda: failing.lost)
    other.transport.write(b"still here")
    run_until(loop, lambda: other.received)
    assert other.received == b"still here" and not other.lost
    assert any("handler failed" in str(event.get("failure", "")) for event in logged)


class BrokenReader:
    """A reader whose read fails and whose disconnection fails too: an error out of the handling."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "BrokenReader"

    def doRead(self) -> None:
        raise RuntimeError("read failed")

    def readConnectionLost(self, reason: Any) -> None:
        raise RuntimeError("disconnection failed")

    def connectionLost(self, reason: Any) -> None:
        raise RuntimeError("disconnection failed")


def test_an_error_escaping_the_handling_is_logged_and_the_loop_goes_on(loop: Any, logged: List[dict]) -> None:
    read_fd, write_fd = os.pipe()
    try:
        reader = BrokenReader(read_fd)
        loop.addReader(reader)
        os.write(write_fd, b"x")
        fired: List[bool] = []
        loop.callLater(0.05, fired.append, True)
        run_until(loop, lambda: fired)
        loop.removeReader(reader)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert any("disconnection failed" in str(event.get("failure", "")) for event in logged)
    assert any(event.get("why") == "Unexpected error handling an I/O event" for event in logged)
