"""The upstream client: pooled HTTP/1.1 keep-alive connections to one backend.

A :class:`ProxyClientFactory` is aimed at one backend and owns its pool: idle
connections are reused last-in first-out, closed after ``keepalive_timeout``
seconds idle, and closed on :meth:`ProxyClientFactory.close`. With
``max_connections`` set, a request that finds no idle connection and no free
slot waits in a bounded first-in first-out queue for at most
``queue_timeout`` seconds. Each request is an :class:`Exchange`: it reports
the response to an :class:`IResponseSink` as it arrives, and is itself the
push producer a slow client pauses, so the backend read stops instead of
powerlb buffering the body. A backend that goes silent for ``idle_timeout``
seconds in the middle of a body fails the exchange; a paused read does not
count as silence.

The bytes are parsed by the sans-IO :class:`powerlb.http11.ResponseParser`;
this module only moves them between sockets and callbacks.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Deque, List, Optional, Set, Union

from twisted.internet.defer import Deferred
from twisted.internet.error import TimeoutError as TCPTimeoutError
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocolFactory,
    IPushProducer,
    IReactorTCP,
    IReactorTime,
)
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from powerlb.backend import Backend
from powerlb.errors import (
    ConnectFailed,
    ConnectTimeout,
    QueueFull,
    QueueTimeout,
    UpstreamError,
    UpstreamTimeout,
)
from powerlb.headers import Headers
from powerlb.http11 import IResponseEvents, ProtocolError, ResponseParser, serialize_request_head
from powerlb.interfaces import IConnectionTransport, IExchange, IResponseSink, IUpstream
from powerlb.tls import tls_failure
from powerlb.transport import write_now

log = Logger()


#: The most requests that may wait for a connection to one backend; more are refused (503).
QUEUE_LIMIT = 1024


#: Request body bytes held while no backend connection takes them; beyond this the client is paused.
STREAM_BUFFER = 256 * 1024


@implementer(IPushProducer)
class BodyStream:
    r"""A request body sent upstream while it arrives from the client.

    The client side calls :meth:`feed` and :meth:`finish`; the backend
    connection :meth:`attach`\ es itself once its request head is written.
    Until then (at most :data:`STREAM_BUFFER` bytes) the body is held and the
    client paused beyond that. Registered as the producer of the backend
    connection, it pauses the client while the backend reads slowly, so the
    body never piles up in powerlb. ``source`` is the client connection's
    producer.
    """

    __slots__ = (
        "buffered",
        "complete",
        "discarding",
        "held",
        "length",
        "source",
        "source_paused",
        "started",
        "writer",
    )

    def __init__(self, length: Optional[int], source: Any) -> None:
        self.length = length
        self.source = source
        self.held: List[bytes] = []
        self.buffered = 0
        self.complete = False
        #: True once a backend connection took any of the body: it can never be sent again.
        self.started = False
        self.writer: Optional[UpstreamConnection] = None
        self.source_paused = False
        #: The backend is done with the request (answered or failed): the rest of the body is dropped.
        self.discarding = False

    def feed(self, data: bytes) -> None:
        """A piece of the body arrived from the client."""
        if self.discarding:
            return
        writer = self.writer
        if writer is not None:
            writer.write_body(data)
            return
        self.held.append(data)
        self.buffered += len(data)
        if self.buffered > STREAM_BUFFER and not self.source_paused:
            self.source_paused = True
            self.source.pauseProducing()

    def finish(self) -> None:
        """The whole body arrived from the client."""
        self.complete = True
        if self.writer is not None:
            self.writer.end_body()

    def attach(self, writer: UpstreamConnection) -> None:
        """``writer`` sends the body from now on: what was held first."""
        self.writer = writer
        self.started = True
        held, self.held, self.buffered = self.held, [], 0
        for data in held:
            writer.write_body(data)
        if self.complete:
            writer.end_body()
        if self.source_paused:
            self.resumeProducing()

    def detach(self) -> None:
        """The backend connection is done with the body (answered, failed or aborted).

        What is still to come from the client is read and dropped, so that the
        client, which may not look at the response before it has sent
        everything, is not cut off mid-upload (a lingering close).
        """
        self.writer = None
        if not self.complete:
            self.discarding = True
            self.held, self.buffered = [], 0
            if self.source_paused:
                self.resumeProducing()

    def pauseProducing(self) -> None:
        self.source_paused = True
        self.source.pauseProducing()

    def resumeProducing(self) -> None:
        self.source_paused = False
        self.source.resumeProducing()

    def stopProducing(self) -> None:
        self.writer = None


@implementer(IExchange)
class Exchange:
    """One request to a backend and its response: the handle the caller keeps.

    As an ``IPushProducer`` it lets the consumer of the response (the client
    connection) pause and resume the backend read, and stop the exchange.
    """

    __slots__ = (
        "connection",
        "deadline",
        "factory",
        "head_request",
        "idempotent",
        "paused",
        "payload",
        "response_time",
        "sink",
        "stream",
    )

    def __init__(
        self,
        factory: ProxyClientFactory,
        payload: bytes,
        head_request: bool,
        idempotent: bool,
        sink: IResponseSink,
        stream: Optional[BodyStream] = None,
    ) -> None:
        self.factory = factory
        self.payload = payload
        #: A body still arriving from the client, sent after ``payload`` (the head).
        self.stream = stream
        self.head_request = head_request
        self.idempotent = idempotent
        self.sink: Optional[IResponseSink] = sink
        self.connection: Optional[UpstreamConnection] = None
        self.paused = False
        #: When waiting for a free connection slot: the time it gives up; 0 when not.
        self.deadline = 0.0
        #: Seconds from the request sent to the response head (set when the head arrives).
        self.response_time = 0.0

    @property
    def active(self) -> bool:
        """True until the exchange ended, failed or was aborted."""
        return self.sink is not None

    def pauseProducing(self) -> None:
        self.paused = True
        if self.connection is not None:
            self.connection.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.connection is not None:
            self.connection.resume()

    def stopProducing(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Give up on the exchange (the client went away); the sink hears nothing more."""
        if self.sink is None:
            return
        self.sink = None
        connection = self.connection
        if connection is None:
            self.factory._forget_waiting(self)
        else:
            connection.abort()


@implementer(IResponseEvents)
class UpstreamConnection(Protocol):
    """One HTTP/1.1 connection to a backend, carrying one exchange at a time.

    One timer per connection enforces both time limits of its exchanges:
    ``response_timeout`` from the request to the response head, then
    ``idle_timeout`` of silence between pieces of the body. Reads only record
    the time; the timer, when it fires, re-arms itself for whatever time is
    left, and lapses once no exchange is in progress. An exchange that finds
    it still armed (from the one before: it can only fire early) leaves it
    be, so a keep-alive connection schedules no timer per request.
    """

    transport: IConnectionTransport  # connected before the factory hands it an exchange

    def __init__(self, factory: ProxyClientFactory) -> None:
        self.factory = factory
        self.parser = ResponseParser(self)
        self.exchange: Optional[Exchange] = None
        self.reused = False
        self.response_started = False
        self.last_data = 0.0  # when the backend last sent something, or the read last resumed
        self.sent_at = 0.0  # when the exchange's request head was written
        self.idle_since = 0.0  # when it last went back to the pool
        self._seconds = factory.reactor.seconds
        self._response_deadline = 0.0
        self._timer: Optional[IDelayedCall] = None

    # -- driven by the factory -------------------------------------------

    def connectionMade(self) -> None:
        self.factory._connection_made(self)

    def send(self, exchange: Exchange, reused: bool) -> None:
        """Write ``exchange``'s request and wait for its response."""
        self.exchange = exchange
        self.reused = reused
        self.response_started = False
        exchange.connection = self
        self.parser.expect(exchange.head_request)
        if exchange.paused:
            self.transport.pauseProducing()
        write_now(self.transport, exchange.payload)
        factory = self.factory
        self.sent_at = self._seconds()
        self._response_deadline = self.sent_at + factory.response_timeout
        if self._timer is None:
            self._timer = factory.reactor.callLater(factory._first_check, self._check_timeout)
        stream = exchange.stream
        if stream is not None:
            self.transport.registerProducer(stream, True)
            stream.attach(self)

    def write_body(self, data: bytes) -> None:
        """Send a piece of the exchange's streamed body (chunk-framed when its length is unknown)."""
        assert self.exchange is not None and self.exchange.stream is not None  # the stream's writer
        if self.exchange.stream.length is None:
            self.transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
        else:
            self.transport.write(data)

    def end_body(self) -> None:
        """The streamed body is complete: the wait for the response starts now."""
        assert self.exchange is not None and self.exchange.stream is not None  # the stream's writer
        if self.exchange.stream.length is None:
            self.transport.write(b"0\r\n\r\n")
        self._release_stream()
        self._response_deadline = self._seconds() + self.factory.response_timeout

    def _release_stream(self) -> None:
        exchange = self.exchange
        if exchange is not None and exchange.stream is not None and exchange.stream.writer is self:
            exchange.stream.detach()
            self.transport.unregisterProducer()

    def resume(self) -> None:
        """Read again for a consumer that wants more; silence counts from now."""
        self.last_data = self._seconds()
        self.transport.resumeProducing()

    def abort(self) -> None:
        """Drop the connection at once (its exchange was abandoned)."""
        self._release_stream()
        self.exchange = None
        self._cancel_timer()
        self.transport.abortConnection()

    # -- IResponseEvents, from the parser ----------------------------------
    # A connection's exchange is active: abort() and _fail() take it off the connection first.

    def response_interim(self, status: int, reason: bytes, headers: Headers) -> None:
        exchange = self.exchange
        if exchange is not None:
            assert exchange.sink is not None
            exchange.sink.interim_received(status, reason, headers)

    def response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self.response_started = True
        exchange = self.exchange
        if exchange is not None:
            exchange.response_time = self._seconds() - self.sent_at
            assert exchange.sink is not None
            exchange.sink.head_received(status, reason, headers)

    def response_body(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is not None:
            assert exchange.sink is not None
            exchange.sink.body_received(data)

    def response_end(self, keep_alive: bool) -> None:
        exchange = self.exchange
        if exchange is not None:  # else aborted by its sink while this read was being parsed
            self._end_exchange(exchange, keep_alive).response_ended()

    def response_whole(
        self, status: int, reason: bytes, headers: Headers, body: bytes, keep_alive: bool
    ) -> None:
        exchange = self.exchange
        if exchange is not None:
            self.response_started = True
            exchange.response_time = self._seconds() - self.sent_at
            self._end_exchange(exchange, keep_alive).response_received(status, reason, headers, body)

    # -- transport events ----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self.exchange is None:
            # Bytes on an idle connection, or after an abort: the stream is unusable.
            self.transport.abortConnection()
            return
        self.last_data = self._seconds()
        try:
            self.parser.feed(data)
        except ProtocolError as e:
            self._fail(UpstreamError(f"invalid response from backend: {e}"))
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancel_timer()
        self.factory._connection_lost(self)
        if self.exchange is None:
            return
        try:
            self.parser.feed_eof()
        except ProtocolError:
            exchange = self.exchange
            fresh = not self.reused and not self.response_started
            tls_problem = tls_failure(reason) if fresh else None
            if tls_problem is not None:
                # The handshake or the certificate check failed: nothing reached the backend.
                self._fail(ConnectFailed(tls_problem))
                return
            stale = self.reused and not self.response_started
            if stale and exchange.idempotent:
                # A keep-alive connection the backend had already closed: the
                # request never reached it. Send it again on a fresh connection.
                self.exchange = None
                exchange.connection = None
                self.factory._retry_fresh(exchange)
                return
            self._fail(UpstreamError("backend closed the connection before the response was complete"))

    # -- internals -------------------------------------------------------

    def _end_exchange(self, exchange: Exchange, keep_alive: bool) -> IResponseSink:
        """Take the answered ``exchange`` off the connection, which goes back to the pool (or closes):
        the exchange's sink, to hear the end."""
        if exchange.stream is not None and not exchange.stream.complete:
            keep_alive = False  # answered before the whole body was sent: the stream is out of step
        self._release_stream()
        self.exchange = None  # the timer lapses when it next fires
        exchange.connection = None
        sink = exchange.sink
        assert sink is not None
        exchange.sink = None
        if exchange.paused:
            self.transport.resumeProducing()
        self.factory._release(self, keep_alive)
        return sink

    def _check_timeout(self) -> None:
        """Fail the exchange if its time is up, or wait for the time left."""
        self._timer = None
        if self.exchange is None:
            return  # no exchange in progress: the timer lapses
        factory = self.factory
        stream = self.exchange.stream
        if stream is not None and not stream.complete:
            # Still sending the body: the client's pace is the client channel's business.
            self._response_deadline = self._seconds() + factory.response_timeout
        if not self.response_started:
            left = self._response_deadline - self._seconds()
            if left <= 0:
                self._time_out("backend did not answer in time", "response")
                return
            left = min(left, factory.idle_timeout)  # if the head comes first, its idle time counts from it
        elif self.exchange.paused:
            left = factory.idle_timeout  # the consumer holds the read, so silence is not the backend's fault
        else:
            left = self.last_data + factory.idle_timeout - self._seconds()
            if left <= 0:
                self._time_out(f"backend sent nothing for {factory.idle_timeout:g} s mid-response", "idle")
                return
        self._timer = factory.reactor.callLater(left, self._check_timeout)

    def _time_out(self, reason: str, kind: str) -> None:
        self._fail(UpstreamTimeout(reason, kind))
        self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, error: UpstreamError) -> None:
        exchange = self.exchange
        if exchange is None:
            return
        self._release_stream()
        self.exchange = None
        self._cancel_timer()
        exchange.connection = None
        _fail(exchange, error)


@implementer(IUpstream)
class ProxyClientFactory(ClientFactory):
    """Pooled HTTP/1.1 client for one backend: powerlb's replacement for Twisted's ``ProxyClientFactory``.

    One instance lives as long as its backend; :meth:`request` sends a
    request on an idle keep-alive connection or on a new one (a connection
    that frees up first serves the oldest waiting request). One timer sweeps
    the idle connections (oldest first, as they are in the pool) instead of
    one per connection going idle. With
    ``max_connections`` above 0, open and connecting connections never
    exceed it; a request with no slot waits, oldest first, up to
    ``queue_timeout`` seconds (then 503), and is refused at once (503) when
    :data:`QUEUE_LIMIT` requests already wait.
    """

    protocol: Callable[..., UpstreamConnection] = UpstreamConnection
    noisy = False

    def __init__(
        self,
        backend: Backend,
        reactor: Any,
        *,
        connect_timeout: float = 5.0,
        response_timeout: float = 30.0,
        keepalive_timeout: float = 60.0,
        max_idle: int = 64,
        idle_timeout: float = 60.0,
        max_connections: int = 0,
        queue_timeout: float = 5.0,
        tls: Any = None,
    ) -> None:
        """``tls`` is the ``IOpenSSLClientConnectionCreator`` of an https backend (see
        :class:`powerlb.tls.BackendTLS`), or None to speak plain HTTP."""
        self.backend = backend
        self.reactor = reactor
        self.connect_timeout = connect_timeout
        self.response_timeout = response_timeout
        self.keepalive_timeout = keepalive_timeout
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.queue_timeout = queue_timeout
        #: The TLS connection creator (None: plain HTTP), for other clients of the backend (powerlb.tunnel).
        self.tls = tls
        self._first_check = min(response_timeout, idle_timeout)
        self._queue_timer: Optional[IDelayedCall] = None
        #: Idle connections, oldest first (reused from the end).
        self._idle: List[UpstreamConnection] = []
        self._idle_timer: Optional[IDelayedCall] = None
        self._waiting: Deque[Exchange] = deque()
        self._connecting = 0
        self._connections: Set[UpstreamConnection] = set()
        self._closed = False
        self._connect_to: IProtocolFactory = self
        if tls is not None:
            tls_factory = TLSMemoryBIOFactory(tls, True, self)
            tls_factory.noisy = False
            self._connect_to = tls_factory

    def buildProtocol(self, addr: Any) -> UpstreamConnection:
        return self.protocol(self)

    @property
    def idle_connections(self) -> int:
        """How many keep-alive connections are waiting for a request."""
        return len(self._idle)

    @property
    def open_connections(self) -> int:
        """How many connections to the backend are open, busy or idle."""
        return len(self._connections)

    @property
    def queued(self) -> int:
        """How many requests are waiting for a connection."""
        return len(self._waiting)

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Union[bytes, BodyStream],
        sink: IResponseSink,
        idempotent: bool,
    ) -> Exchange:
        """Send ``method target`` with ``headers`` and ``body``; ``sink`` hears the response.

        ``body`` is the whole body, or a :class:`BodyStream` still arriving
        (sent with its length, or chunked when the length is unknown).
        """
        if isinstance(body, BodyStream):
            stream: Optional[BodyStream] = body
            if body.length is None:
                headers = [*headers, (b"transfer-encoding", b"chunked")]
            payload = serialize_request_head(method, target, headers, body.length)
        else:
            stream = None
            content_length = len(body) if body or method in _BODY_METHODS else None
            payload = serialize_request_head(method, target, headers, content_length) + body
        exchange = Exchange(self, payload, method == b"HEAD", idempotent, sink, stream)
        self._dispatch(exchange)
        return exchange

    def close(self) -> None:
        """Close idle connections now, and every busy one as soon as its exchange ends."""
        self._closed = True
        self._close_all_idle()

    # -- pool internals ----------------------------------------------------

    def _dispatch(self, exchange: Exchange) -> None:
        if self._idle:
            connection = self._idle.pop()
            connection.send(exchange, reused=True)
            return
        waiting = self._waiting
        if self._connecting > len(waiting):
            exchange.deadline = 0.0  # a connection on its way has nobody to serve yet
        elif self._slot_free():
            exchange.deadline = 0.0
            self._connect()
        elif len(waiting) >= QUEUE_LIMIT:
            # On the next turn: the caller hears nothing before request() returns.
            self.reactor.callLater(0, _fail, exchange, QueueFull("backend queue full"))
            return
        else:
            self.backend.queue_waits += 1
            exchange.deadline = self.reactor.seconds() + self.queue_timeout
            if self._queue_timer is None:
                self._queue_timer = self.reactor.callLater(self.queue_timeout, self._expire_waiting)
        waiting.append(exchange)

    def _slot_free(self) -> bool:
        limit = self.max_connections
        return not limit or self._connecting + len(self._connections) < limit

    def _connect(self) -> None:
        self._connecting += 1
        backend = self.backend
        self.reactor.connectTCP(backend.host, backend.port, self._connect_to, timeout=self.connect_timeout)

    def _connect_waiting(self) -> None:
        """Start connections for waiting requests no attempt covers, as far as the limit allows."""
        while self._connecting < len(self._waiting) and self._slot_free():
            self._connect()

    def _next_waiting(self) -> Exchange:
        exchange = self._waiting.popleft()
        if not self._waiting:
            self._cancel_queue_timer()
        return exchange

    def _expire_waiting(self) -> None:
        """Fail the requests whose queue time is up; wait for the next deadline."""
        self._queue_timer = None
        now = self.reactor.seconds()
        expired = []
        # Deadlines are set in queue order, so the first one not yet due ends the search.
        for exchange in self._waiting:
            if exchange.deadline > now:
                self._queue_timer = self.reactor.callLater(exchange.deadline - now, self._expire_waiting)
                break
            if exchange.deadline:
                expired.append(exchange)
        busy = self._connecting + len(self._connections)
        for exchange in expired:
            self._waiting.remove(exchange)
            self.backend.queue_timeouts += 1
            _fail(exchange, QueueTimeout(f"backend queue timeout ({busy} connections busy)"))

    def _cancel_queue_timer(self) -> None:
        if self._queue_timer is not None:
            self._queue_timer.cancel()
            self._queue_timer = None

    def _retry_fresh(self, exchange: Exchange) -> None:
        # Idle connections older than the failed one are likely stale too.
        self._close_all_idle()
        self._dispatch(exchange)

    def _close_all_idle(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.transport.loseConnection()

    def _sweep_idle(self) -> None:
        """Close the connections idle for ``keepalive_timeout``; wait for the next one's time."""
        self._idle_timer = None
        idle = self._idle
        expiry = self.reactor.seconds() - self.keepalive_timeout
        expired = 0
        while expired < len(idle) and idle[expired].idle_since <= expiry:
            expired += 1
        self._idle = idle[expired:]
        for connection in idle[:expired]:
            connection.transport.loseConnection()
        if self._idle:
            self._idle_timer = self.reactor.callLater(self._idle[0].idle_since - expiry, self._sweep_idle)

    def _forget_waiting(self, exchange: Exchange) -> None:
        if exchange in self._waiting:
            self._waiting.remove(exchange)
            if not self._waiting:
                self._cancel_queue_timer()

    def _connection_made(self, connection: UpstreamConnection) -> None:
        self._connecting -= 1
        self._connections.add(connection)
        if self._waiting:
            connection.send(self._next_waiting(), reused=False)
        else:
            self._release(connection, True)

    def _release(self, connection: UpstreamConnection, keep_alive: bool) -> None:
        if not keep_alive or self._closed:
            connection.transport.loseConnection()
            return
        if self._waiting:
            connection.send(self._next_waiting(), reused=True)
            return
        if len(self._idle) >= self.max_idle:
            connection.transport.loseConnection()
            return
        connection.idle_since = self.reactor.seconds()
        self._idle.append(connection)
        if self._idle_timer is None:
            self._idle_timer = self.reactor.callLater(self.keepalive_timeout, self._sweep_idle)

    def _connection_lost(self, connection: UpstreamConnection) -> None:
        self._connections.discard(connection)
        if connection in self._idle:
            self._idle.remove(connection)
            if not self._idle:
                self._close_all_idle()  # nothing left to sweep: the timer goes too
        self._connect_waiting()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self._connecting -= 1
        if not self._waiting:
            return
        kind = ConnectTimeout if reason.check(TCPTimeoutError) else ConnectFailed
        _fail(self._next_waiting(), kind(f"cannot connect to backend: {_describe(reason)}"))
        self._connect_waiting()

    def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
        """Connection ends are handled by the protocol itself."""


_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


def _fail(exchange: Exchange, error: UpstreamError) -> None:
    """Tell ``exchange``'s sink it failed, unless it has already ended or been aborted."""
    sink = exchange.sink
    exchange.sink = None
    if sink is not None:
        sink.request_failed(error)


def _describe(reason: Failure) -> str:
    return reason.getErrorMessage() or type(reason.value).__name__


@implementer(IResponseSink)
class _StatusProbe:
    """Collects the status of a health-check response into a Deferred."""

    def __init__(self) -> None:
        self.status = 0
        self.exchange: Optional[Exchange] = None
        #: Fires with the status (Optional as health's ProbeResult: None is a TCP check's success).
        self.deferred: Deferred[Optional[int]] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[Optional[int]]) -> None:
        if self.exchange is not None:
            self.exchange.abort()

    def interim_received(self, status: int, reason: bytes, headers: Headers) -> None:
        pass

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        self.status = status

    def body_received(self, data: bytes) -> None:
        pass

    def response_ended(self) -> None:
        self.deferred.callback(self.status)

    def response_received(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        self.deferred.callback(status)

    def request_failed(self, error: UpstreamError) -> None:
        self.deferred.errback(error)


def probe(
    reactor: IReactorTCP | IReactorTime, backend: Backend, path: bytes, timeout: float, tls: Any = None
) -> Deferred[Optional[int]]:
    """GET ``path`` from ``backend`` on a fresh connection; fires with the status code.

    Uses the same client as proxied traffic, with no pooling, so a probe
    also proves the backend accepts new connections (over TLS with ``tls``,
    as for :class:`ProxyClientFactory`, so a bad certificate fails it).
    """
    factory = ProxyClientFactory(
        backend, reactor, connect_timeout=timeout, response_timeout=timeout, max_idle=0, tls=tls
    )
    sink = _StatusProbe()
    host = f"{backend.host}:{backend.port}".encode()
    headers = [(b"host", host), (b"user-agent", b"powerlb-health-check"), (b"connection", b"close")]
    sink.exchange = factory.request(b"GET", path, headers, b"", sink, idempotent=True)
    return sink.deferred
