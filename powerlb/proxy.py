"""The request path: a twisted.web Resource that serves from the cache or proxies to a backend.

:class:`ProxyResource` receives every client request. A fresh cached
response is answered at once; anything else is handed to the
:class:`~powerlb.upstream.ProxyClientFactory` of the backend the balancer
picks, and a :class:`ProxiedRequest` streams the answer back (storing it when
the cache policy allows). Decisions come from the pure modules
(``headers``, ``cachepolicy``, ``balancing``); this module only wires them to
twisted.web.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Dict, List, Optional, Set

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from powerlb import cachepolicy
from powerlb.backend import Backend
from powerlb.balancing import IBalancer
from powerlb.cache import CachedResponse, ICacheStore
from powerlb.headers import Headers, forward_request_headers, forward_response_headers, get_first
from powerlb.stats import Counters
from powerlb.upstream import IResponseSink, ProxyClientFactory, UpstreamError

log = Logger()

#: Methods that may be sent again when the first attempt certainly never reached a backend.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})


class ProxyResource(Resource):
    """Entry point for every client request: cache lookup, backend choice, hand-off upstream."""

    isLeaf = True

    def __init__(
        self,
        balancer: IBalancer,
        clients: Dict[Backend, ProxyClientFactory],
        cache: Optional[ICacheStore],
        counters: Counters,
        clock: IReactorTime,
        *,
        max_object: int,
        retries: int = 1,
    ) -> None:
        super().__init__()
        self.balancer = balancer
        self.clients = clients
        self.cache = cache
        self.counters = counters
        self.clock = clock
        self.max_object = max_object
        self.retries = retries

    def render(self, request: Request) -> Any:
        self.counters.requests += 1
        method = request.method
        headers = [
            (name.lower(), value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        target, host = _origin_form(request.uri, get_first(headers, b"host"))
        if host is None and request.clientproto == b"HTTP/1.1":
            return error_response(request, 400, "HTTP/1.1 request without a Host header")
        scheme = b"https" if request.isSecure() else b"http"
        cache_key = None
        if self.cache is not None and cachepolicy.request_is_cacheable(method, headers):
            cache_key = cachepolicy.primary_key(scheme, host or b"", target)
            entry = self.cache.get(cache_key, headers)
            now = self.clock.seconds()
            if entry is not None and entry.is_fresh(now):
                self.counters.cache_hits += 1
                return serve_cached(request, entry, now)
            self.counters.cache_misses += 1
        else:
            self.counters.cache_bypass += 1
        body = request.content.read() if request.content is not None else b""
        client = request.getClientAddress()
        client_host = getattr(client, "host", "unknown").encode()
        upstream_headers = forward_request_headers(headers, client_host, scheme, host)
        ProxiedRequest(self, request, target, headers, upstream_headers, body, cache_key, client_host).start()
        return NOT_DONE_YET


@implementer(IResponseSink, IPushProducer)
class ProxiedRequest:
    """One client request on its way through a backend: the response sink and the flow-control link.

    It picks a backend, sends the request with that backend's client,
    relays the response to the twisted.web request as it streams in, and
    retries once elsewhere when a backend cannot be reached. As the push
    producer registered with the client connection it passes a slow client's
    pause on to the backend read.
    """

    def __init__(
        self,
        resource: ProxyResource,
        request: Request,
        target: bytes,
        client_headers: Headers,
        upstream_headers: Headers,
        body: bytes,
        cache_key: Optional[bytes],
        balance_key: bytes,
    ) -> None:
        self.resource = resource
        self.request = request
        self.method = request.method
        self.target = target
        self.client_headers = client_headers
        self.upstream_headers = upstream_headers
        self.body = body
        self.cache_key = cache_key
        self.balance_key = balance_key
        self.tried: Set[Backend] = set()
        self.backend: Optional[Backend] = None
        self.exchange: Any = None
        self.request_time = 0.0
        self.capture: Optional[List[bytes]] = None
        self.captured = 0
        self.store_plan: Optional[cachepolicy.StorePlan] = None
        self.response_headers: Headers = []
        self.status = 0
        self.reason = b""
        self.done = False
        request.notifyFinish().addErrback(self._client_gone)
        request.registerProducer(self, True)

    def start(self) -> None:
        """Send the request to a healthy backend not tried yet, or answer 503."""
        resource = self.resource
        backend = resource.balancer.pick(self.balance_key, self.tried)
        if backend is None:
            reason = "no healthy backend" if not self.tried else "no other healthy backend to retry on"
            self._answer_error(503, reason)
            return
        self.backend = backend
        self.tried.add(backend)
        backend.in_flight += 1
        backend.requests += 1
        self.request_time = resource.clock.seconds()
        idempotent = self.method in IDEMPOTENT_METHODS
        self.exchange = resource.clients[backend].request(
            self.method,
            self.target,
            self.upstream_headers,
            self.body,
            self,
            idempotent=idempotent and not self.body,
        )

    # -- IResponseSink -----------------------------------------------------

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        request = self.request
        self.status, self.reason = status, reason
        self.response_headers = forward_response_headers(headers)
        if self.cache_key is not None and self.method == b"GET":
            self._plan_capture(headers)
        request.setResponseCode(status, reason or None)
        x_cache = b"MISS" if self.cache_key is not None else b"BYPASS"
        set_response_headers(request, self.response_headers, x_cache)

    def body_received(self, data: bytes) -> None:
        self.request.write(data)
        capture = self.capture
        if capture is not None:
            self.captured += len(data)
            if self.captured > self.resource.max_object:
                self.capture = None
            else:
                capture.append(data)

    def response_ended(self) -> None:
        self._release_backend()
        self._finish_client()
        if self.capture is not None:
            self._store(b"".join(self.capture))

    def request_failed(self, error: UpstreamError) -> None:
        backend = self._release_backend()
        backend.failures += 1
        self.resource.counters.upstream_errors += 1
        log.info(
            "{method} {target} via {backend}: {reason}",
            method=self.method.decode("latin-1"),
            target=self.target.decode("latin-1"),
            backend=backend.url,
            reason=error.reason,
        )
        if self.done:
            return
        if self.request.startedWriting:
            # The status line is out: the only honest signal left is a cut connection.
            self.done = True
            self.request.unregisterProducer()
            self.request.transport.abortConnection()
            return
        can_retry = error.retryable and self.method in IDEMPOTENT_METHODS
        if can_retry and len(self.tried) <= self.resource.retries:
            self.start()
            return
        self._answer_error(error.status, error.reason)

    # -- IPushProducer (the client connection's flow control) --------------

    def pauseProducing(self) -> None:
        if self.exchange is not None:
            self.exchange.pauseProducing()

    def resumeProducing(self) -> None:
        if self.exchange is not None:
            self.exchange.resumeProducing()

    def stopProducing(self) -> None:
        self._abort_upstream()

    # -- internals -------------------------------------------------------

    def _plan_capture(self, headers: Headers) -> None:
        now = self.resource.clock.seconds()
        plan = cachepolicy.plan_store(
            self.method, self.client_headers, self.status, headers, self.request_time, now
        )
        if plan is None:
            return
        length = get_first(headers, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.resource.max_object:
            return
        self.store_plan = plan
        self.capture = []

    def _store(self, body: bytes) -> None:
        entry = CachedResponse.from_plan(
            self.store_plan,
            self.status,
            self.reason,
            [(k, v) for k, v in self.response_headers if k not in _NOT_STORED],
            body,
            self.client_headers,
        )
        if self.resource.cache.put(self.cache_key, entry):
            self.resource.counters.cache_stores += 1

    def _release_backend(self) -> Backend:
        backend = self.backend
        backend.in_flight -= 1
        self.exchange = None
        return backend

    def _finish_client(self) -> None:
        if self.done:
            return
        self.done = True
        self.request.unregisterProducer()
        self.request.finish()

    def _answer_error(self, status: int, reason: str) -> None:
        if self.done:
            return
        self.done = True
        self.request.unregisterProducer()
        self.resource.counters.errors += 1
        body = error_response(self.request, status, reason)
        self.request.write(body)
        self.request.finish()

    def _abort_upstream(self) -> None:
        if self.exchange is not None:
            self.exchange.abort()
            self._release_backend()

    def _client_gone(self, failure: Failure) -> None:
        self.done = True
        self.capture = None
        self._abort_upstream()


#: Response headers a cache entry does not keep: per-hop or per-serving.
_NOT_STORED = frozenset({b"via", b"age", b"x-cache"})


def set_response_headers(request: Request, headers: Headers, x_cache: bytes) -> None:
    """Replace the twisted.web response headers with ``headers`` plus ``X-Cache``.

    twisted.web's own ``Server`` header is dropped; its ``Date`` is kept only
    when the response has none.
    """
    out = request.responseHeaders
    date = out.getRawHeaders(b"date")
    out.removeHeader(b"server")
    out.removeHeader(b"date")
    grouped: Dict[bytes, List[bytes]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    if b"date" not in grouped and date:
        grouped[b"date"] = date
    grouped[b"x-cache"] = [x_cache]
    for name, values in grouped.items():
        out.setRawHeaders(name, values)


def serve_cached(request: Request, entry: CachedResponse, now: float) -> bytes:
    """Answer ``request`` from ``entry``: its status and headers, a current ``Age``, and the body."""
    request.setResponseCode(entry.status, entry.reason or None)
    headers = [
        *entry.headers,
        (b"age", cachepolicy.format_age(entry.age(now))),
        (b"via", b"1.1 powerlb"),
    ]
    headers = [(k, v) for k, v in headers if k != b"content-length"]
    headers.append((b"content-length", b"%d" % len(entry.body)))
    set_response_headers(request, headers, b"HIT")
    return b"" if request.method == b"HEAD" else entry.body


def error_response(request: Request, status: int, reason: str) -> bytes:
    """Set a short plain-text error status on ``request``; returns the body to send."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"server", b"powerlb")
    request.setHeader(b"cache-control", b"no-store")
    body = f"{status} {_reason_phrase(status)}: {reason}\n".encode()
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def _reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _origin_form(uri: bytes, host: Optional[bytes]) -> tuple[bytes, Optional[bytes]]:
    """The origin-form target and the effective host of a request URI (RFC 9112 section 3.2)."""
    if uri.startswith((b"http://", b"https://")):
        rest = uri.split(b"://", 1)[1]
        slash = rest.find(b"/")
        authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        return path, authority
    return uri, host
