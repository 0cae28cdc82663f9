"""Dispatching: send a request to a healthy backend, and to another when it never reached the first.

:class:`Dispatcher` is what everything that needs a backend response calls:
the client request path, cache revalidations, coalesced fetches. It asks the
balancer for a backend, hands the request to that backend's
:class:`~powerlb.upstream.ProxyClientFactory`, keeps the backend's
in-flight and failure counts true, and retries a request that certainly
never reached a backend. Whoever asked hears the outcome through an
:class:`~powerlb.interfaces.IResponseSink`.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Set, Tuple, Union

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from zope.interface import implementer

from powerlb.backend import Backend
from powerlb.balancing import IBalancer
from powerlb.errors import BackendBusy, NoBackend, UpstreamError
from powerlb.hashkey import RoutedRequest
from powerlb.headers import Headers, get_first
from powerlb.interfaces import IExchange, IResponseSink, IUpstream
from powerlb.outlier import OutlierEjector
from powerlb.stats import Counters
from powerlb.tunnel import DEFAULT_IDLE_TIMEOUT, Tunnels
from powerlb.upstream import BodyStream, ProxyClientFactory

log = Logger()

#: Methods that may be sent again when the first attempt certainly never reached a backend.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})

#: A response with a Content-Length up to this is held until complete before the client sees it,
#: so a backend failing in the middle of it can still be retried (idempotent) or answered 502/504.
HOLD_LIMIT = 64 * 1024


class UpstreamRequest:
    """A request as it goes upstream: forwarded headers, re-framed body.

    ``upgrade`` is the client connection of an upgrade request (see :mod:`powerlb.tunnel`), else None.
    """

    __slots__ = ("body", "headers", "method", "target", "upgrade")

    def __init__(
        self,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Union[bytes, BodyStream] = b"",
        upgrade: Any = None,
    ) -> None:
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.upgrade = upgrade


class Dispatcher:
    """Picks backends for requests and sends them, retrying where that is safe.

    Each retry adds one to ``counters.retries``; each response head, its
    upstream time to the backend's latency histogram, and each timeout to the
    backend's ``timeouts`` by kind. Upgrade requests go on connections of
    their own (``tunnels``, closed after ``tunnel_idle_timeout`` seconds idle).
    """

    def __init__(
        self,
        balancer: IBalancer,
        clients: Mapping[Backend, IUpstream],
        retries: int = 1,
        outliers: Optional[OutlierEjector] = None,
        counters: Optional[Counters] = None,
        tunnel_idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.balancer = balancer
        self.clients = clients
        self.retries = retries
        self.outliers = outliers
        self.counters = Counters() if counters is None else counters
        self.tunnels = Tunnels(tunnel_idle_timeout, self.counters)

    def send(
        self, request: UpstreamRequest, sink: IResponseSink, client: Optional[RoutedRequest] = None
    ) -> Dispatch:
        """Send ``request``; ``sink`` hears the response or the final failure (502, 503, 504).

        ``client`` is the client request it comes from, which the balancer may route on.
        """
        dispatch = Dispatch(self, request, sink, client)
        dispatch.attempt()
        return dispatch


@implementer(IResponseSink, IPushProducer)
class Dispatch:
    """One request's way to a backend: the attempts, and the producer its consumer pauses.

    It sits between the backend's exchange and the caller's sink, passing
    response events through and failures on only when no retry is left.
    ``backend`` is the backend tried last (None when none was), and
    ``upstream_time`` the seconds its response head took (-1 until one came).
    """

    __slots__ = (
        "backend",
        "client",
        "committed",
        "dispatcher",
        "exchange",
        "held",
        "paused",
        "request",
        "sink",
        "tried",
        "upstream_time",
    )

    def __init__(
        self,
        dispatcher: Dispatcher,
        request: UpstreamRequest,
        sink: IResponseSink,
        client: Optional[RoutedRequest],
    ) -> None:
        self.dispatcher = dispatcher
        self.request = request
        self.sink: Optional[IResponseSink] = sink
        self.client = client
        self.tried: Set[Backend] = set()
        self.backend: Optional[Backend] = None
        self.exchange: Optional[IExchange] = None
        self.paused = False
        #: True once the response head went to the sink: from then on nothing can be retried.
        self.committed = False
        #: While a small response is held: (head, body pieces); None when passing through.
        self.held: Optional[Tuple[Tuple[int, bytes, Headers], List[bytes]]] = None
        self.upstream_time = -1.0

    def attempt(self, previous: Optional[UpstreamError] = None) -> None:
        """Send the request to a healthy backend not tried yet, or fail: 503 when none was
        eligible at all, else with ``previous``.

        ``previous`` is the failure that makes this a retry (counted when a backend takes it);
        with no other backend to retry on, it is the answer (e.g. 502 for a refused connection).
        """
        backend = self.dispatcher.balancer.pick(self.client, self.tried)
        if backend is None:
            self._fail(previous if previous is not None else NoBackend("no healthy backend"))
            return
        if previous is not None:
            self.dispatcher.counters.retries += 1
        self.backend = backend
        self.tried.add(backend)
        backend.in_flight += 1
        backend.requests += 1
        request = self.request
        replayable = request.method in IDEMPOTENT_METHODS and not request.body
        client = self.dispatcher.clients[backend]
        if request.upgrade is not None:
            assert isinstance(client, ProxyClientFactory)  # an upgrade needs a real pool's settings
            client = self.dispatcher.tunnels.client_for(client, request.upgrade)
        exchange = self.exchange = client.request(
            request.method, request.target, request.headers, request.body, self, idempotent=replayable
        )
        if self.paused:
            exchange.pauseProducing()

    # -- IResponseSink: events from the backend exchange -------------------
    # They come only from a live exchange (sent to ``backend``), while ``sink`` is set:
    # stopProducing aborts the exchange as it drops the sink.

    def interim_received(self, status: int, reason: bytes, headers: Headers) -> None:
        # Passed on at once: an interim response never commits (a retry may send others).
        assert self.sink is not None
        self.sink.interim_received(status, reason, headers)

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        self._observe(status)
        length = get_first(headers, b"content-length")
        if (
            length is not None
            and length.isdigit()
            and int(length) <= HOLD_LIMIT
            and get_first(headers, b"transfer-encoding") is None  # which overrides it: no known length
        ):
            self.held = ((status, reason, headers), [])
            return
        self.committed = True
        assert self.sink is not None
        self.sink.head_received(status, reason, headers)

    def body_received(self, data: bytes) -> None:
        if self.held is not None:
            self.held[1].append(data)
        else:
            assert self.sink is not None
            self.sink.body_received(data)

    def response_ended(self) -> None:
        held, self.held = self.held, None
        if held is None:
            self._end().response_ended()
            return
        (status, reason, headers), pieces = held
        self._end().response_received(status, reason, headers, b"".join(pieces))

    def response_received(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        self._observe(status)
        self._end().response_received(status, reason, headers, body)

    def request_failed(self, error: UpstreamError) -> None:
        backend = self._release()
        self.held = None  # a held response is dropped whole: the client never saw it
        if not isinstance(error, BackendBusy):
            # A full queue says the backend is busy, not that it is failing.
            backend.failures += 1
            if self.dispatcher.outliers is not None:
                self.dispatcher.outliers.failure(backend)
        if error.timeout_kind:
            backend.timeouts[error.timeout_kind] += 1
        log.info(
            "{method} {target} via {backend}: {reason}",
            method=self.request.method.decode("latin-1"),
            target=self.request.target.decode("latin-1"),
            backend=backend.url,
            reason=error.reason,
        )
        body = self.request.body
        body_sent = isinstance(body, BodyStream) and body.started
        # An idempotent request may go again while its client has seen nothing of the response:
        # it never reached a backend, or that backend failed before a response came out of it.
        retry = self.request.method in IDEMPOTENT_METHODS and not body_sent and not self.committed
        if retry and len(self.tried) <= self.dispatcher.retries:
            self.attempt(error)
        else:
            self._fail(error)

    # -- IPushProducer: the consumer of the response controls the backend read

    def pauseProducing(self) -> None:
        self.paused = True
        if self.exchange is not None:
            self.exchange.pauseProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        if self.exchange is not None:
            self.exchange.resumeProducing()

    def stopProducing(self) -> None:
        """Abandon the request (its client went away): the sink hears nothing more."""
        self.sink = None
        if self.exchange is not None:
            self.exchange.abort()
            self._release()

    # -- internals -------------------------------------------------------

    def _observe(self, status: int) -> None:
        """A response head came: its upstream time and status count for the backend."""
        assert self.exchange is not None and self.backend is not None
        elapsed = self.upstream_time = self.exchange.response_time
        self.backend.latency.observe(elapsed)
        outliers = self.dispatcher.outliers
        if outliers is not None:
            outliers.response(self.backend, status)

    def _end(self) -> IResponseSink:
        """The response is complete (nothing can be retried from now on): the sink, to hear it."""
        self._release()
        self.committed = True
        sink, self.sink = self.sink, None
        assert sink is not None
        return sink

    def _release(self) -> Backend:
        backend = self.backend
        assert backend is not None  # released only after an attempt sent it
        backend.in_flight -= 1
        self.exchange = None
        return backend

    def _fail(self, error: UpstreamError) -> None:
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.request_failed(error)
