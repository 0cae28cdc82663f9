"""Test doubles for powerlb and code built on it, shipped with powerlb as ``treq.testing`` is with treq.

- :class:`RecordingSink`: an :class:`~powerlb.interfaces.IResponseSink` that
  records the response events it hears, in order.
- :class:`FakeUpstream`: stands in for one backend's
  :class:`~powerlb.upstream.ProxyClientFactory`, driven by a
  :class:`twisted.internet.task.Clock`: it records each request and answers
  as the test scripts it (answer, fail, hold until the test answers, after a
  delay on the clock). :class:`FakePool` is a few backends with one each, a
  round-robin balancer and a :class:`~powerlb.dispatch.Dispatcher` on them.
- :class:`TestBackend`: a real twisted.web backend on ``127.0.0.1`` (port 0:
  any free one) with scripted routes, recording what it receives, for
  end-to-end tests.

Nothing here needs more than powerlb's own dependencies. Sending a GET that
the first backend refuses and the second answers::

    >>> from twisted.internet.task import Clock
    >>> from powerlb.dispatch import UpstreamRequest
    >>> from powerlb.testing import FakePool, RecordingSink
    >>> clock = Clock()
    >>> pool = FakePool(2, clock=clock)
    >>> first, second = pool.upstreams
    >>> first.fail("refused")
    >>> second.answer(200, [(b"content-type", b"text/plain")], b"hello", delay=0.25)
    >>> dispatcher = pool.dispatcher(retries=1)
    >>> sink = RecordingSink()
    >>> dispatch = dispatcher.send(UpstreamRequest(b"GET", b"/", [(b"host", b"example")]), sink)
    >>> clock.advance(0)  # scripted replies arrive on the clock: the refusal is due now
    >>> sink.events
    []
    >>> clock.advance(0.25)
    >>> sink.status, sink.header(b"content-length"), sink.body, sink.ended
    (200, b'5', b'hello', True)
    >>> [exchange.target for exchange in second.requests], dispatcher.counters.retries
    ([b'/'], 1)

A request nothing was scripted for is held: the test answers it through
:attr:`FakeUpstream.requests`::

    >>> held = RecordingSink()
    >>> dispatch = dispatcher.send(UpstreamRequest(b"GET", b"/slow", [(b"host", b"example")]), held)
    >>> exchange = first.requests[-1]
    >>> exchange.target, exchange.active
    (b'/slow', True)
    >>> exchange.respond(404, body=b"none")
    >>> held.status, held.body
    (404, b'none')
"""

from __future__ import annotations

import functools
import json
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from powerlb.backend import Backend, BackendSpec
from powerlb.balancing import IBalancer, RoundRobin
from powerlb.dispatch import Dispatcher
from powerlb.errors import ConnectFailed, ConnectTimeout, QueueFull, UpstreamError, UpstreamTimeout
from powerlb.headers import Headers, get_first
from powerlb.interfaces import IExchange, IResponseSink, IUpstream, whole_as_parts
from powerlb.upstream import BodyStream

#: Header fields as a test gives them: a list or a tuple of (name, value) pairs.
HeaderItems = Sequence[Tuple[bytes, bytes]]

__all__ = [
    "FAILURES",
    "FakeExchange",
    "FakePool",
    "FakeUpstream",
    "RecordedRequest",
    "RecordingSink",
    "TestBackend",
]

#: The failures :meth:`FakeUpstream.fail` and :meth:`FakeExchange.fail` know by name, made as
#: powerlb's upstream client reports them.
FAILURES: Dict[str, Callable[[], UpstreamError]] = {
    # The connection could not be made: nothing was sent (retryable).
    "refused": lambda: ConnectFailed("cannot connect to backend: Connection was refused"),
    "connect-timeout": lambda: ConnectTimeout("cannot connect to backend: connection timed out"),
    # No connection to spare: a 503 that does not count as a backend failure.
    "busy": lambda: QueueFull("backend queue full"),
    # The backend took the request and then failed it.
    "reset": lambda: UpstreamError("backend closed the connection before the response was complete"),
    "timeout": lambda: UpstreamTimeout("backend did not answer in time", "response"),
    "idle": lambda: UpstreamTimeout("backend sent nothing for 60 s mid-response", "idle"),
}

#: What :meth:`FakeUpstream.fail` and :meth:`FakeExchange.fail` take: a name in :data:`FAILURES`,
#: or the error itself.
Fault = Union[str, UpstreamError]


def _error(failure: Fault) -> UpstreamError:
    if isinstance(failure, UpstreamError):
        return failure
    try:
        return FAILURES[failure]()
    except KeyError:
        known = ", ".join(sorted(FAILURES))
        raise ValueError(f"unknown failure {failure!r}: one of {known}, or an UpstreamError") from None


@implementer(IResponseSink)
class RecordingSink:
    """Records the events of one upstream response, in order, in :attr:`events`.

    Events are ``("interim", status, reason, headers)``, ``("head", status, reason,
    headers)``, ``("body", data)``, ``("end",)`` and ``("failed", error)``; a whole
    response (``response_received``) is recorded as its head, body and end.
    An event after the end or a failure, or a second head, breaks the
    IResponseSink contract: it raises AssertionError.
    """

    def __init__(self) -> None:
        self.events: List[Tuple[Any, ...]] = []
        #: The 1xx responses heard before the final head: (status, headers).
        self.interims: List[Tuple[int, Headers]] = []
        self.status: Optional[int] = None
        self.reason: Optional[bytes] = None
        self.headers: Optional[Headers] = None
        self.ended = False
        #: True when the response came whole (``response_received``, recorded as its parts).
        self.whole = False
        #: The error of ``request_failed``, once heard.
        self.failure: Optional[UpstreamError] = None
        self._body: List[bytes] = []

    @property
    def body(self) -> bytes:
        """The body pieces heard so far, joined."""
        return b"".join(self._body)

    @property
    def done(self) -> bool:
        """True once the response ended or failed."""
        return self.ended or self.failure is not None

    def header(self, name: bytes) -> Optional[bytes]:
        """The first value of the response header ``name`` (lower case), None if absent or no head yet."""
        return None if self.headers is None else get_first(self.headers, name)

    def interim_received(self, status: int, reason: bytes, headers: Headers) -> None:
        self._check("interim")
        self.interims.append((status, list(headers)))
        self.events.append(("interim", status, reason, list(headers)))

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        self._check("head")
        if self.status is not None:
            raise AssertionError(f"second response head {status} after {self.status}")
        self.status, self.reason, self.headers = status, reason, list(headers)
        self.events.append(("head", status, reason, list(headers)))

    def body_received(self, data: bytes) -> None:
        self._check("body")
        self._body.append(data)
        self.events.append(("body", data))

    def response_ended(self) -> None:
        self._check("end")
        self.ended = True
        self.events.append(("end",))

    def response_received(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        self.whole = True
        whole_as_parts(self, status, reason, headers, body)

    def request_failed(self, error: UpstreamError) -> None:
        self._check("failure")
        self.failure = error
        self.events.append(("failed", error))

    def _check(self, event: str) -> None:
        if self.done:
            raise AssertionError(f"{event} heard after the response was over: {self.events}")


@implementer(IExchange)
class FakeExchange:
    """One request a :class:`FakeUpstream` received, and the handle the test answers it with.

    ``method``, ``target``, ``headers``, ``body`` (bytes, or the
    :class:`~powerlb.upstream.BodyStream` still arriving) and ``idempotent``
    are what the caller sent. :meth:`respond`, or :meth:`send_head`,
    :meth:`send_body` and :meth:`end` one by one, answer it; :meth:`fail`
    fails it. Once it ended, failed or was aborted (``aborted``: the caller
    gave up) the sink hears nothing more. ``paused`` is the caller's flow
    control (events still arrive while paused).
    """

    def __init__(
        self,
        clock: Clock,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Union[bytes, BodyStream],
        sink: IResponseSink,
        idempotent: bool,
    ) -> None:
        self.clock = clock
        self.method = method
        self.target = target
        self.headers = list(headers)
        self.body = body
        self.sink: Optional[IResponseSink] = sink
        self.idempotent = idempotent
        self.sent_at = clock.seconds()
        #: Seconds from the request to the response head, on the clock (0.0 until the head).
        self.response_time = 0.0
        self.paused = False
        self.aborted = False

    def header(self, name: bytes) -> Optional[bytes]:
        """The first value of the request header ``name`` (lower case), None if absent."""
        return get_first(self.headers, name)

    @property
    def active(self) -> bool:
        """True until the exchange ended, failed or was aborted."""
        return self.sink is not None

    # -- the backend's side: what the test plays ---------------------------

    def respond(
        self,
        status: int = 200,
        headers: HeaderItems = (),
        body: Union[bytes, Sequence[bytes]] = b"",
        reason: bytes = b"",
        cut: Optional[Fault] = None,
    ) -> None:
        """Answer with a whole response: head, body, end.

        ``headers`` get a ``Content-Length`` of the body unless they have one
        or a ``Transfer-Encoding``. ``body`` is bytes, or pieces each heard
        apart. With ``cut`` the response fails that way after the body
        instead of ending (the backend died mid-response).
        """
        pieces = [body] if isinstance(body, bytes) else list(body)
        headers = list(headers)
        if get_first(headers, b"content-length") is None and get_first(headers, b"transfer-encoding") is None:
            headers.append((b"content-length", b"%d" % sum(map(len, pieces))))
        self.send_head(status, headers, reason)
        for piece in pieces:
            if piece:
                self.send_body(piece)
        if cut is None:
            self.end()
        else:
            self.fail(cut)

    def send_interim(self, status: int, headers: HeaderItems = (), reason: bytes = b"") -> None:
        """A 1xx response (e.g. ``103 Early Hints``) before the final one."""
        if self.sink is not None:
            self.sink.interim_received(status, reason, list(headers))

    def send_head(self, status: int = 200, headers: HeaderItems = (), reason: bytes = b"") -> None:
        """The status line and headers, exactly as given."""
        if self.sink is not None:
            self.response_time = self.clock.seconds() - self.sent_at
            self.sink.head_received(status, reason, list(headers))

    def send_body(self, data: bytes) -> None:
        """A piece of the body."""
        if self.sink is not None:
            self.sink.body_received(data)

    def end(self) -> None:
        """The response is complete."""
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.response_ended()

    def fail(self, failure: Fault = "reset") -> None:
        """Fail the exchange: a name in :data:`FAILURES` or an UpstreamError."""
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.request_failed(_error(failure))

    # -- IPushProducer: the caller's side ------------------------------------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.abort()

    def abort(self) -> None:
        """The caller gives up on the exchange: its sink hears nothing more."""
        if self.sink is not None:
            self.sink = None
            self.aborted = True

    def __repr__(self) -> str:
        state = "active" if self.active else "aborted" if self.aborted else "over"
        return f"<FakeExchange {self.method.decode('latin-1')} {self.target.decode('latin-1')} {state}>"


Reply = Callable[[FakeExchange], None]


@implementer(IUpstream)
class FakeUpstream:
    """Stands in for one backend's :class:`~powerlb.upstream.ProxyClientFactory`, driven by ``clock``.

    Each request is recorded in :attr:`requests` (a :class:`FakeExchange`) and
    gets the next scripted reply, in the order scripted: :meth:`answer`,
    :meth:`fail` or :meth:`hold`. A reply comes ``delay`` seconds later on
    the clock, never before :meth:`request` returns (``clock.advance(0)``
    delivers those due now). A request with no reply left is held: the test
    answers it through its exchange.
    """

    def __init__(self, clock: Optional[Clock] = None, backend: Optional[Backend] = None) -> None:
        self.clock = Clock() if clock is None else clock
        self.backend = backend
        self.requests: List[FakeExchange] = []
        self._script: Deque[Tuple[Optional[Reply], float, Optional[int]]] = deque()

    def answer(
        self,
        status: int = 200,
        headers: HeaderItems = (),
        body: Union[bytes, Sequence[bytes]] = b"",
        *,
        reason: bytes = b"",
        cut: Optional[Fault] = None,
        delay: float = 0.0,
        times: Optional[int] = 1,
    ) -> None:
        """Answer the next ``times`` requests (None: every one from then on) as :meth:`FakeExchange.respond`
        does, ``delay`` seconds after each arrives."""
        self._add(lambda exchange: exchange.respond(status, headers, body, reason, cut), delay, times)

    def fail(self, failure: Fault = "refused", *, delay: float = 0.0, times: Optional[int] = 1) -> None:
        """Fail the next ``times`` requests (None: every one from then on) with ``failure`` (a name in
        :data:`FAILURES` or an UpstreamError), ``delay`` seconds after each arrives."""
        _error(failure)  # a bad name fails here, not later on the clock
        self._add(lambda exchange: exchange.fail(failure), delay, times)

    def hold(self, times: Optional[int] = 1) -> None:
        """Hold the next ``times`` requests (None: every one from then on) for the test to answer."""
        self._add(None, 0.0, times)

    def request(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Union[bytes, BodyStream],
        sink: IResponseSink,
        idempotent: bool,
    ) -> FakeExchange:
        """As :meth:`ProxyClientFactory.request`: record the request, play the next scripted reply."""
        exchange = FakeExchange(self.clock, method, target, headers, body, sink, idempotent)
        self.requests.append(exchange)
        if self._script:
            reply, delay, times = self._script[0]
            if times is not None:
                if times <= 1:
                    self._script.popleft()
                else:
                    self._script[0] = (reply, delay, times - 1)
            if reply is not None:
                self.clock.callLater(delay, reply, exchange)
        return exchange

    @property
    def active(self) -> List[FakeExchange]:
        """The requests not yet answered, failed or aborted."""
        return [exchange for exchange in self.requests if exchange.active]

    def _add(self, reply: Optional[Reply], delay: float, times: Optional[int]) -> None:
        if times is not None and times < 1:
            raise ValueError(f"times must be at least 1 (or None: every request), not {times}")
        self._script.append((reply, delay, times))


class FakePool:
    """``count`` backends (``http://127.0.0.1:9001`` and on), each answered by a :class:`FakeUpstream`
    on one clock, and a round-robin balancer over them.

    ``clients`` maps each backend to its fake, as the service maps backends
    to their ``ProxyClientFactory``; :meth:`dispatcher` builds a
    :class:`~powerlb.dispatch.Dispatcher` on them (replace ``balancer``
    first to use another algorithm).
    """

    def __init__(self, count: int = 1, clock: Optional[Clock] = None) -> None:
        self.clock = Clock() if clock is None else clock
        ports = range(9001, 9001 + count)
        self.backends = [Backend(BackendSpec(f"http://127.0.0.1:{p}", "127.0.0.1", p)) for p in ports]
        self.upstreams = [FakeUpstream(self.clock, backend) for backend in self.backends]
        self.clients: Dict[Backend, FakeUpstream] = dict(zip(self.backends, self.upstreams))
        self.balancer: IBalancer = RoundRobin(self.backends)

    def dispatcher(self, **settings: Any) -> Dispatcher:
        """A Dispatcher over the fakes; ``settings`` are its keyword arguments (``retries``, ``counters``)."""
        return Dispatcher(self.balancer, self.clients, **settings)

    def received(self) -> List[int]:
        """How many requests each backend received, in backend order."""
        return [len(upstream.requests) for upstream in self.upstreams]


# -- a real backend for end-to-end tests -----------------------------------------------------

#: A route of a TestBackend: renders a twisted.web request (bytes, or NOT_DONE_YET).
Handler = Callable[[Request], Any]


class RecordedRequest:
    """What a :class:`TestBackend` received of one request (header names lower case)."""

    def __init__(self, request: Request) -> None:
        self.method: bytes = request.method
        self.uri: bytes = request.uri
        self.headers: Headers = [
            (name.lower(), value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        assert request.content is not None  # twisted.web sets it before rendering
        self.body: bytes = request.content.read()
        #: Which connection carried it (equal for requests on one connection).
        self.connection = id(request.channel)

    def header(self, name: bytes) -> List[bytes]:
        """Every value of the request header ``name`` (lower case)."""
        return [v for k, v in self.headers if k == name]


class _Routes(Resource):
    isLeaf = True

    def __init__(self, backend: TestBackend) -> None:
        super().__init__()
        self.backend = backend

    def render(self, request: Request) -> Any:
        backend = self.backend
        backend.requests.append(RecordedRequest(request))
        assert request.content is not None  # twisted.web sets it before rendering
        request.content.seek(0)
        request.setHeader(b"x-backend", backend.name.encode())
        handler = backend.routes.get(request.path, backend.default)
        return handler(request)


class _CountingSite(Site):
    def __init__(self, backend: TestBackend) -> None:
        super().__init__(_Routes(backend), reactor=backend.reactor)
        self.noisy = False
        self.backend = backend
        self.channels: List[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.backend.connections += 1
        channel = super().buildProtocol(addr)
        self.channels.append(channel)
        return channel

    def log(self, request: Any) -> None:
        pass


class TestBackend:
    """A real HTTP backend on 127.0.0.1 that records the requests it receives.

    ``routes`` maps a path to a :data:`Handler`; :meth:`answer`, :meth:`hang`
    and :meth:`cut` script the usual ones. ``/health`` answers ``ok``; any other path the JSON
    ``{"backend": name, "uri": uri}`` (:meth:`default`). Every response
    carries ``X-Backend: name``. ``reactor`` defaults to the global one.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, name: str, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.name = name
        self.reactor = reactor
        self.requests: List[RecordedRequest] = []
        self.connections = 0
        self.routes: Dict[bytes, Handler] = {b"/health": lambda request: b"ok\n"}
        self.site = _CountingSite(self)
        self.port: Any = None
        self.port_number = 0

    def default(self, request: Request) -> bytes:
        """The route of the paths not in ``routes``."""
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"backend": self.name, "uri": request.uri.decode()}).encode()

    def answer(
        self, path: bytes, status: int = 200, body: bytes = b"", headers: HeaderItems = (), delay: float = 0.0
    ) -> None:
        """Answer the requests for ``path`` with ``status``, ``headers`` and ``body``, ``delay`` seconds
        after each arrives (on the backend's reactor)."""

        def handler(request: Request) -> Any:
            request.setResponseCode(status)
            for name, value in headers:
                request.responseHeaders.addRawHeader(name, value)
            if not delay:
                return body
            call = self.reactor.callLater(delay, _finish, request, body)
            request.notifyFinish().addErrback(lambda _: call.cancel())
            return NOT_DONE_YET

        self.routes[path] = handler

    def hang(self, path: bytes, first_bytes: bytes = b"", length: int = 100) -> None:
        """Answer the requests for ``path`` with a head announcing ``length`` body bytes, ``first_bytes``
        of them, and then nothing more (a backend gone silent)."""
        self.routes[path] = functools.partial(_start_body, length=length, first_bytes=first_bytes)

    def cut(self, path: bytes, first_bytes: bytes = b"", length: int = 100) -> None:
        """As :meth:`hang`, then close the connection (a backend that died mid-response)."""

        def handler(request: Request) -> Any:
            _start_body(request, length, first_bytes)
            request.loseConnection()
            return NOT_DONE_YET

        self.routes[path] = handler

    def start(self, port_number: int = 0) -> TestBackend:
        """Listen on 127.0.0.1:``port_number`` (0: a free port, then in :attr:`port_number`)."""
        self.port = self.reactor.listenTCP(port_number, self.site, interface="127.0.0.1")
        self.port_number = self.port.getHost().port
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}"

    def stop(self) -> Deferred[None]:
        """Stop listening and drop every open connection (a crashed backend)."""
        port, self.port = self.port, None
        stopped = maybeDeferred(port.stopListening) if port is not None else succeed(None)
        for channel in self.site.channels:
            # twisted.web wraps each HTTPChannel (to switch to HTTP/2): the transport is the inner one's
            transport = getattr(getattr(channel, "_channel", channel), "transport", None)
            if transport is not None and transport.connected:
                transport.abortConnection()
        return stopped

    def connections_used(self) -> int:
        """Distinct connections that carried requests other than health checks."""
        return len({r.connection for r in self.requests if r.uri != b"/health"})

    def served(self) -> int:
        """Requests served, not counting health checks."""
        return sum(1 for r in self.requests if r.uri != b"/health")


def _start_body(request: Request, length: int, first_bytes: bytes) -> Any:
    request.setHeader(b"content-length", b"%d" % length)
    request.write(first_bytes)  # b"" still sends the head
    return NOT_DONE_YET


def _finish(request: Request, body: bytes) -> None:
    request.write(body)
    request.finish()
