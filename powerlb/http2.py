"""HTTP/2 for TLS listeners: Twisted's ``H2Connection`` with powerlb's limits and streamed bodies.

A TLS connection that negotiates ``h2`` over ALPN is handed to a
:class:`ProxyH2Connection` (see :class:`powerlb.server.NegotiatingChannel`).
Each stream becomes an :class:`H2ProxyRequest`, which the same
:class:`~powerlb.proxy.ProxyResource` serves as an HTTP/1.1 request: its body
streams to the backend, paused through the stream's producer (HTTP/2 flow
control), and the response flows back under the stream's flow control.

The request limits apply per stream, checked on the header block before
a request is made (:func:`request_problem`); a refused stream gets a short
plain-text answer and is reset. Pseudo-headers never become request headers,
cookie fields are joined as HTTP/1.1 needs them (:func:`http11_headers`),
and the backend always gets HTTP/1.1. Needs ``twisted[http2]`` (h2, priority);
importing this module fails without it.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import h2.errors
import h2.exceptions
from twisted.internet.error import ConnectionLost
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web._http2 import H2Connection, H2Stream
from twisted.web.server import Request

from powerlb.headers import Headers
from powerlb.interfaces import IConnectionTransport
from powerlb.responses import plain_body
from powerlb.server import Limits, ProxyRequest, ProxySite


def request_problem(headers: Headers, limits: Limits) -> Optional[Tuple[int, str]]:
    """``(status, reason)`` when an HTTP/2 request's header block is refused, else None.

    The HTTP/1.1 limits, counted the same way: the ``:path`` against
    ``max_url_length`` (414), the header fields against ``max_headers`` and
    ``max_header_size`` (431), a declared ``Content-Length`` against
    ``max_body`` (413); a request without ``:path`` (CONNECT) or without a
    host (``:authority`` or ``Host``) is refused with 400.
    """
    path: Optional[bytes] = None
    has_host = False
    fields = 0
    size = 0
    length: Optional[bytes] = None
    for name, value in headers:
        if name[:1] == b":":
            if name == b":path":
                path = value
            elif name == b":authority":
                has_host = True
            continue
        fields += 1
        size += len(name) + len(value) + 4  # as the "name: value\r\n" line of HTTP/1.1
        if name == b"host":
            has_host = True
        elif name == b"content-length":
            length = value
    if not path:
        return 400, "request without :path (CONNECT is not supported)"
    if len(path) > limits.max_url_length:
        return 414, "request target longer than the limit"
    if fields > limits.max_headers:
        return 431, "too many request header lines"
    if size > limits.max_header_size:
        return 431, "request headers larger than the limit"
    if not has_host:
        return 400, "request without :authority or Host"
    if length is not None and not length.isdigit():
        return 400, "invalid Content-Length"
    if length is not None and int(length) > limits.max_body:
        return 413, "request body larger than the limit"
    return None


def http11_headers(headers: Headers, ended: bool) -> Headers:
    """An HTTP/2 header block as the HTTP/1.1 request to the backend needs it.

    The ``cookie`` fields HTTP/2 may split are joined with ``"; "`` (RFC 9113
    section 8.2.3); a request that ended with its headers (``ended``) and
    declares no length gets ``content-length: 0``, so that it is known to
    have no body (twisted.web would otherwise expect one of unknown length
    for methods other than GET and HEAD). Pseudo-headers are left for
    Twisted, which turns them into the method, target and ``Host``.
    """
    cookies = [value for name, value in headers if name == b"cookie"]
    out = [(name, value) for name, value in headers if name != b"cookie"]
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    if ended and not any(name == b"content-length" for name, _ in headers):
        out.append((b"content-length", b"0"))
    return out


class H2ProxyRequest(ProxyRequest):
    """A :class:`~powerlb.server.ProxyRequest` on an HTTP/2 stream (its ``channel``).

    Twisted learns the length while it is still adding the headers, so a
    request with a body is rendered by :meth:`stream_opened`, once its
    connection has handed over the whole header block.
    """

    # Twisted's stub says an HTTPChannel; an HTTP/2 request's channel is its stream.
    channel: H2Stream  # type: ignore[assignment]

    def headers_complete(self) -> None:
        """Not yet on HTTP/2: :meth:`stream_opened` renders once every header is in."""

    def stream_opened(self) -> None:
        """Every header is in: render now if the body streams (else when the stream ends)."""
        if self.body_stream is not None:
            stream = self.channel
            Request.requestReceived(self, stream.command, stream.path, b"HTTP/2")

    def body_source(self) -> Any:
        """The stream: pausing it stops reading its data and opening its flow-control window."""
        return self.channel

    def reject(self, status: int, reason: str) -> None:
        """Answer ``status`` with a short ``reason`` and reset the stream (the connection stays)."""
        stream = self.channel
        connection = stream._conn
        assert isinstance(connection, ProxyH2Connection)  # the connection that made the stream
        connection.reject_stream(stream.streamID, status, reason)

    def abort(self) -> None:
        """Cut the response off: reset the stream."""
        self.channel.abortConnection()

    #: The stream writes its own HEADERS frame: the response head goes through twisted.web's headers.
    send_head = None  # type: ignore[assignment]  # the request path tests for None (proxy.py)
    send_response = None  # type: ignore[assignment]


class ProxyH2Connection(H2Connection):
    """One HTTP/2 client connection: Twisted's, with powerlb's limits, requests and draining.

    Like :class:`~powerlb.server.TrackedChannel` it is in its site's
    ``channels`` while open; ``requests`` are its streams' requests.
    """

    transport: IConnectionTransport  # connected before any read

    def __init__(self, site: ProxySite) -> None:
        super().__init__(site.reactor)
        self.site: ProxySite = site  # type: ignore[assignment]  # Twisted's class declares ``site = None``
        self.factory = site  # type: ignore[assignment]  # likewise ``factory = None``
        self.requestFactory = H2ProxyRequest
        self.timeOut = site.timeOut  # type: ignore[assignment]  # Twisted: int here, float on its sites
        # TimeoutMixin's timer clock, assigned per instance as Twisted's own factories do.
        self.callLater = site.reactor.callLater  # type: ignore[method-assign, assignment]
        self._draining = False

    @property
    def requests(self) -> List[Any]:
        """The requests of the open streams."""
        return [stream._request for stream in self.streams.values()]

    def connectionMade(self) -> None:
        self.site.connection_opened(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone, _cancelTimeouts: bool = True) -> None:
        self.site.connection_closed(self)
        super().connectionLost(reason, _cancelTimeouts=_cancelTimeouts)

    def close_after_requests(self) -> None:
        """Serve the open streams; new ones are refused (the client may retry them elsewhere)."""
        self._draining = True

    def loseConnection(self) -> None:
        """Send GOAWAY and close the connection."""
        self.conn.close_connection()
        self._tryToWriteControlData()
        self.transport.loseConnection()

    def reject_stream(self, stream_id: int, status: int, reason: str) -> None:
        """Answer stream ``stream_id`` with a plain-text ``status``, then reset it if the client
        is still sending (RFC 9113 section 8.1); the request, if any, hears its stream go."""
        body = plain_body(status, reason)
        headers = [
            (b":status", b"%d" % status),
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"server", b"powerlb"),
        ]
        conn = self.conn
        try:
            with_body = conn.local_flow_control_window(stream_id) >= len(body)
            conn.send_headers(stream_id, headers, end_stream=not with_body)
            if with_body:
                conn.send_data(stream_id, body, end_stream=True)
            if not conn.streams[stream_id].closed:
                conn.reset_stream(stream_id, h2.errors.ErrorCodes.NO_ERROR)
        except (h2.exceptions.StreamClosedError, KeyError):
            pass  # the client reset the stream already
        self._tryToWriteControlData()
        stream = self.streams.get(stream_id)
        if stream is not None:
            stream.connectionLost(Failure(ConnectionLost(reason)))
            self._requestDone(stream_id)

    # -- Twisted's stream events, with powerlb's checks --------------------

    def _requestReceived(self, event: Any) -> None:
        stream_id = event.stream_id
        if self._draining:
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            self._tryToWriteControlData()
            return
        problem = request_problem(event.headers, self.site.limits)
        if problem is not None:
            self.reject_stream(stream_id, *problem)
            return
        event.headers = http11_headers(event.headers, event.stream_ended is not None)
        super()._requestReceived(event)
        self.streams[stream_id]._request.stream_opened()

    def _requestDataReceived(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestDataReceived(event)
        else:
            # A stream already answered or refused: drop the data, keep the connection's window open.
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)

    def _requestEnded(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestEnded(event)

    def _requestAborted(self, event: Any) -> None:
        if event.stream_id in self.streams:
            super()._requestAborted(event)
