"""The request path: a twisted.web Resource that serves from the cache or proxies to a backend.

:class:`ProxyResource` receives every client request. A fresh cached
response is answered at once; anything else goes to the
:class:`~powerlb.dispatch.Dispatcher`, which hands it to the
:class:`~powerlb.upstream.ProxyClientFactory` of the backend the balancer
picks, and a :class:`ClientResponder` streams the answer back to the
twisted.web request. Decisions come from the pure modules (``headers``,
``cachepolicy``, ``balancing``); this module only wires them to twisted.web.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, Dict, List, Optional

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from powerlb import cachepolicy
from powerlb.cache import CachedResponse
from powerlb.caching import CacheLayer
from powerlb.dispatch import Dispatcher, UpstreamRequest
from powerlb.headers import Headers, forward_request_headers, forward_response_headers, get_first
from powerlb.stats import Counters
from powerlb.upstream import IResponseSink, UpstreamError


class ProxyResource(Resource):
    """Entry point for every client request: cache look-up, then the dispatcher."""

    isLeaf = True

    def __init__(self, dispatcher: Dispatcher, cache: Optional[CacheLayer], counters: Counters) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.cache = cache
        self.counters = counters

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
            self.counters.errors += 1
            return error_response(request, 400, "HTTP/1.1 request without a Host header")
        scheme = b"https" if request.isSecure() else b"http"
        key = None
        if self.cache is not None:
            key, entry = self.cache.lookup(method, scheme, host or b"", target, headers)
            if entry is not None:
                return serve_cached(request, entry, self.cache.clock.seconds())
        else:
            self.counters.cache_bypass += 1
        responder = ClientResponder(request, self.counters, b"BYPASS" if key is None else b"MISS")
        sink: Any = responder if key is None else self.cache.storing(responder, key, method, headers)
        body = request.content.read() if request.content is not None else b""
        client_host = getattr(request.getClientAddress(), "host", "unknown").encode()
        upstream = UpstreamRequest(
            method, target, forward_request_headers(headers, client_host, scheme, host), body
        )
        responder.start(self.dispatcher.send(upstream, sink, client_host))
        return NOT_DONE_YET


@implementer(IResponseSink, IPushProducer)
class ClientResponder:
    """Writes one upstream response to its twisted.web request as it streams in.

    As the producer registered with the client connection it passes a slow
    client's pause on to the backend read, and a client that goes away
    abandons the upstream request.
    """

    __slots__ = ("counters", "dispatch", "done", "request", "x_cache")

    def __init__(self, request: Request, counters: Counters, x_cache: bytes) -> None:
        self.request = request
        self.counters = counters
        self.x_cache = x_cache
        self.dispatch: Any = None
        self.done = False
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(self._client_gone)

    def start(self, dispatch: Any) -> None:
        """Follow ``dispatch`` (it may already have ended, e.g. with a 503)."""
        if not self.done:
            self.dispatch = dispatch

    # -- IResponseSink -----------------------------------------------------

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        self.request.setResponseCode(status, reason or None)
        set_response_headers(self.request, forward_response_headers(headers), self.x_cache)

    def body_received(self, data: bytes) -> None:
        self.request.write(data)

    def response_ended(self) -> None:
        if self._end():
            self.request.finish()

    def request_failed(self, error: UpstreamError) -> None:
        if not self._end():
            return
        if self.request.startedWriting:
            # The status line is out: the only honest signal left is a cut connection.
            self.request.transport.abortConnection()
            return
        self.counters.errors += 1
        self.counters.upstream_errors += error.status != 503
        self.request.write(error_response(self.request, error.status, error.reason))
        self.request.finish()

    # -- IPushProducer (the client connection's flow control) --------------

    def pauseProducing(self) -> None:
        if self.dispatch is not None:
            self.dispatch.pauseProducing()

    def resumeProducing(self) -> None:
        if self.dispatch is not None:
            self.dispatch.resumeProducing()

    def stopProducing(self) -> None:
        self._client_gone(None)

    # -- internals -------------------------------------------------------

    def _end(self) -> bool:
        """Mark the response over; False when it already was (the client left)."""
        if self.done:
            return False
        self.done = True
        self.dispatch = None
        self.request.unregisterProducer()
        return True

    def _client_gone(self, failure: Optional[Failure]) -> None:
        dispatch = self.dispatch
        self.done = True
        self.dispatch = None
        if dispatch is not None:
            dispatch.stopProducing()


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
