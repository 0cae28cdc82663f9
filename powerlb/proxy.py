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

from typing import Any, Callable, Optional, Union

from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from powerlb.caching import CacheLayer
from powerlb.dispatch import Dispatch, Dispatcher, UpstreamRequest
from powerlb.headers import (
    Headers,
    forward_request_headers,
    forward_response_headers,
    get_first,
    strip_hop_by_hop,
)
from powerlb.http11 import serialize_interim
from powerlb.responses import error_response, set_response_headers
from powerlb.stats import Counters
from powerlb.sticky import StickyCookie
from powerlb.tunnel import is_upgrade, upgrade_request_headers
from powerlb.upstream import BodyStream, IResponseSink, UpstreamError


class ClientRequest:
    """What the request path needs to know of a client request, parsed once."""

    __slots__ = ("client_host", "headers", "host", "method", "scheme", "target", "upgrade")

    def __init__(self, request: Request) -> None:
        self.method: bytes = request.method
        parsed = getattr(request, "parsed_headers", None)  # a ProxyChannel's one-pass parse
        self.headers: Headers = (
            parsed
            if parsed is not None
            else [
                (name.lower(), value)
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ]
        )
        self.target, self.host = _origin_form(request.uri, get_first(self.headers, b"host"))
        self.scheme = b"https" if request.isSecure() else b"http"
        self.client_host: bytes = getattr(request.getClientAddress(), "host", "unknown").encode()
        #: For an upgrade request (WebSocket...): its connection, which a 101 turns into a tunnel; else None.
        upgrade = is_upgrade(self.method, request.clientproto, self.headers)
        self.upgrade: Any = request.channel if upgrade else None

    def with_method_and_headers(self, method: bytes, headers: Headers) -> ClientRequest:
        """A copy of this request with another ``method`` and ``headers`` (e.g. the cache's own GET).

        Copied slot by slot: ``copy.copy`` of a slotted object takes over ten times as long.
        """
        other = ClientRequest.__new__(ClientRequest)
        other.method = method
        other.headers = headers
        other.target = self.target
        other.host = self.host
        other.scheme = self.scheme
        other.client_host = self.client_host
        other.upgrade = self.upgrade
        return other

    def upstream(self, body: Union[bytes, BodyStream]) -> UpstreamRequest:
        """The request to send to a backend: forwarding headers added, hop-by-hop ones dropped."""
        headers = forward_request_headers(self.headers, self.client_host, self.scheme, self.host)
        if self.upgrade is not None:
            headers = upgrade_request_headers(self.headers, headers)
        return UpstreamRequest(self.method, self.target, headers, body, self.upgrade)


class ProxyResource(Resource):
    """Entry point for every client request: the cache layer first, if any, then the dispatcher.

    With ``sticky`` (the sticky-session cookie) that cookie is removed from
    requests sent upstream and set on client responses (see :mod:`powerlb.sticky`).
    """

    isLeaf = True

    def __init__(
        self,
        dispatcher: Dispatcher,
        cache: Optional[CacheLayer],
        counters: Counters,
        sticky: Optional[StickyCookie] = None,
    ) -> None:
        super().__init__()
        self.dispatcher = dispatcher
        self.cache = cache
        self.counters = counters
        self.sticky = sticky

    def render(self, request: Request) -> Any:
        self.counters.requests += 1
        client = ClientRequest(request)
        if client.host is None and request.clientproto == b"HTTP/1.1":
            self.counters.errors += 1
            return error_response(request, 400, "HTTP/1.1 request without a Host header")
        if self.cache is None or client.upgrade is not None:  # upgrades never touch the cache
            self.counters.cache_bypass += 1
            return self.forward(request, client, b"BYPASS")
        return self.cache.render(self, request, client)

    def forward(
        self,
        request: Request,
        client: ClientRequest,
        x_cache: bytes,
        wrap: Optional[Callable[[Any], Any]] = None,
    ) -> Any:
        """Send ``request`` upstream and stream the answer back; ``wrap`` may wrap the response sink."""
        responder = ClientResponder(request, self.counters, x_cache, self.sticky)
        sink = responder if wrap is None else wrap(responder)
        body = getattr(request, "body_stream", None)
        if body is None:
            body = request.content.read() if request.content is not None else b""
        request.dispatch = dispatch = self.send(client, body, sink)
        responder.start(dispatch)
        return NOT_DONE_YET

    def send(self, client: ClientRequest, body: Union[bytes, BodyStream], sink: Any) -> Dispatch:
        """Send ``client``'s request upstream (routed on it, sticky cookie removed); ``sink`` hears back."""
        upstream = client.upstream(body)
        if self.sticky is not None:
            upstream.headers = self.sticky.strip(upstream.headers)
        return self.dispatcher.send(upstream, sink, client)


@implementer(IResponseSink, IPushProducer)
class ClientResponder:
    """Writes one upstream response to its twisted.web request as it streams in.

    As the producer registered with the client connection it passes a slow
    client's pause on to the backend read, and a client that goes away
    abandons the upstream request. With ``sticky`` a response a backend
    answered gets the sticky cookie of that backend, unless the client
    already sent it.
    """

    __slots__ = ("counters", "dispatch", "done", "request", "sticky", "x_cache")

    def __init__(
        self, request: Request, counters: Counters, x_cache: bytes, sticky: Optional[StickyCookie] = None
    ) -> None:
        self.request = request
        self.counters = counters
        self.x_cache = x_cache
        self.sticky = sticky
        self.dispatch: Any = None
        self.done = False
        request.registerProducer(self, True)
        request.notifyFinish().addErrback(self._client_gone)

    def start(self, dispatch: Any) -> None:
        """Follow ``dispatch`` (it may already have ended, e.g. with a 503)."""
        if not self.done:
            self.dispatch = dispatch

    # -- IResponseSink -----------------------------------------------------

    def interim_received(self, status: int, reason: bytes, headers: Headers) -> None:
        """Relay a 1xx ahead of the response, to HTTP/1.1 clients only (RFC 9110 section 15.2).

        Written to the connection directly: twisted.web's request has no way to
        send one, and it is neither the response nor counted as it. HTTP/1.0
        clients never get one, and HTTP/2 streams drop them.
        """
        request = self.request
        if self.done or request.startedWriting or request.clientproto != b"HTTP/1.1":
            return
        request.channel.transport.write(serialize_interim(status, reason, strip_hop_by_hop(headers)))

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        if status == 101:
            self._switched(reason)
            return
        headers = forward_response_headers(headers)
        if self.sticky is not None:
            self._stick(headers)
        request = self.request
        send_head = getattr(request, "send_head", None)  # powerlb's own request writes its head at once
        if send_head is not None:
            send_head(status, reason, headers, self.x_cache)
            return
        request.setResponseCode(status, reason or None)
        set_response_headers(request, headers, self.x_cache)

    def body_received(self, data: bytes) -> None:
        self.request.write(data)

    def response_ended(self) -> None:
        if self._end():
            self.request.finish()

    def request_failed(self, error: UpstreamError) -> None:
        if not self._end():
            return
        request = self.request
        request.x_cache = self.x_cache
        if request.startedWriting:
            # The status line is out: the only honest signal left is a cut connection.
            # twisted.web logs only finished requests, so this one is logged here.
            request.channel.factory.log(request)
            request.abort()
            return
        self.counters.errors += 1
        self.counters.upstream_errors += error.status != 503
        request.write(error_response(request, error.status, error.reason))
        request.finish()

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

    def _switched(self, reason: bytes) -> None:
        """The backend switched protocols (an upgrade request's): the tunnel (:mod:`powerlb.tunnel`) writes
        the 101 and takes the connection over, so twisted.web's request writes nothing more. It is logged
        now; the dispatch stays open (the backend's in-flight count) until the client connection closes."""
        self.done = True
        request = self.request
        request.unregisterProducer()
        request.setResponseCode(101, reason or None)
        request.x_cache = self.x_cache
        request.channel.factory.log(request)

    def _stick(self, headers: Headers) -> None:
        """Add the sticky cookie of the backend whose response this is (none for one made from the cache
        after the backend failed)."""
        dispatch = self.dispatch
        if dispatch is not None and dispatch.committed:
            cookie = self.sticky.set_cookie(
                dispatch.client.headers, dispatch.backend.url, self.request.isSecure()
            )
            if cookie is not None:
                headers.append((b"set-cookie", cookie))

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


def _origin_form(uri: bytes, host: Optional[bytes]) -> tuple[bytes, Optional[bytes]]:
    """The origin-form target and the effective host of a request URI (RFC 9112 section 3.2)."""
    if uri.startswith((b"http://", b"https://")):
        rest = uri.split(b"://", 1)[1]
        slash = rest.find(b"/")
        authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        return path, authority
    return uri, host
