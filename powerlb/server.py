"""The client-facing HTTP server: twisted.web's channel with the limits a load balancer needs.

:class:`ProxyChannel` is twisted.web's ``HTTPChannel`` with stricter input
rules checked as the request arrives: a request target over
``max_url_length`` gets 414, a header section over ``max_header_size`` or
``max_headers`` lines 431, a body over ``max_body`` 413 (a chunked one as soon
as its chunk sizes add up past it), obsolete line folding, bare CR and a
second ``Host`` 400 (with twisted.web's own rejections of conflicting
``Content-Length`` / ``Transfer-Encoding`` framing, also 400); each is a
short plain-text answer after which the connection is closed, so nothing
ambiguous ever reaches a backend. A client that dribbles its request head is
cut with 408 once ``client_timeout`` has passed since its first byte, however
steadily it dribbles (slowloris); one that goes silent between requests is
cut by the channel's idle timeout.
:class:`ProxySite` refuses connections beyond ``max_connections`` with 503.
On a TLS listener with HTTP/2 support, a :class:`NegotiatingChannel` hands
connections that negotiated ``h2`` (ALPN) to :mod:`powerlb.http2`.

Plain requests take a shorter way: when a read holds exactly one complete,
plain ``GET``/``HEAD`` request and the connection has nothing in flight,
:func:`parse_simple_request` reads it in one pass. The site's
``fast_answer`` (the same cache layer and policy as every other request)
may answer it with ready bytes, with no twisted.web ``Request`` built; on a
miss the request is built from that parse (``parsed_headers``) instead of
twisted.web parsing the head again line by line. Anything unusual takes the
normal way.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Sequence, Set, Tuple, Type
from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web.http import NO_BODY_CODES, HTTPChannel, _ChunkedTransferDecoder, _MalformedChunkedDataError
from twisted.web.http_headers import Headers as TwistedHeaders
from twisted.web.server import Request, Site

from powerlb.headers import (
    KNOWN_FIELDS,
    KNOWN_NAMES,
    BlockMemo,
    Headers,
    SharedHeaders,
    forward_response_headers,
    remember_field,
    rememberable,
    split_tokens,
    token_name,
)
from powerlb.interfaces import FastAnswer, IConnectionTransport
from powerlb.outcomes import Outcomes
from powerlb.plan import Decision
from powerlb.policies import peer_host
from powerlb.responses import forwarded_header_lines, header_lines, http_date, plain_response
from powerlb.settings import Config
from powerlb.transport import write_now
from powerlb.upstream import BodyStream

if TYPE_CHECKING:
    from powerlb.http2 import ProxyH2Connection


class Limits:
    """The request limits of one listener, from the config."""

    __slots__ = ("client_timeout", "max_body", "max_header_size", "max_headers", "max_url_length")

    def __init__(self, config: Config) -> None:
        self.client_timeout = config.client_timeout
        self.max_body = config.max_body
        self.max_header_size = config.max_header_size
        self.max_headers = config.max_headers
        self.max_url_length = config.max_url_length


#: Request headers that need the full request path (framing, upgrades, connection handling).
_NOT_SIMPLE = frozenset(
    {b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect", b"te", b"keep-alive"}
)

SimpleRequest = Tuple[bytes, bytes, Headers]

#: The bytes of a request target: visible ASCII (twisted.web's own check also lets DEL and 0x80-0xB0 by).
_TARGET_CHARS = bytes(range(0x21, 0x7F))


def _target_ok(target: bytes) -> bool:
    """Whether ``target`` is all visible ASCII (checked as :func:`~powerlb.headers.is_token` checks)."""
    return not target.translate(None, _TARGET_CHARS)


def parse_simple_request(data: bytes, limits: Limits) -> Optional[SimpleRequest]:
    """``(method, target, headers)`` if ``data`` is exactly one plain request, else None.

    Plain: ``GET`` or ``HEAD``, HTTP/1.1, an origin-form target, no body or
    framing, no ``Connection`` handling, every line well formed and within
    ``limits``. None means "take the normal way", which also rejects what is
    malformed; nothing here answers or rejects. A header block seen before
    (:data:`KNOWN_REQUEST_BLOCKS`) gives the headers it was read into.
    """
    if len(data) > limits.max_header_size or data.find(b"\r\n\r\n") != len(data) - 4:
        return None
    line_end = data.find(b"\r\n")
    request_line = data[:line_end].split(b" ")
    if len(request_line) != 3:
        return None
    method, target, version = request_line
    if (
        method not in (b"GET", b"HEAD")
        or version != b"HTTP/1.1"
        or not target.startswith(b"/")
        or len(target) > limits.max_url_length
        or not _target_ok(target)  # (so the request line has no CR, LF nor NUL)
    ):
        return None
    block = data[line_end + 2 : -4]
    headers = KNOWN_REQUEST_BLOCKS.get(block)
    if headers is None:
        headers = _simple_headers(block, limits.max_headers) if block else []
        if headers is None:
            return None
    elif len(headers) > limits.max_headers:  # (remembered under another listener's limits)
        return None
    return method, target, headers


#: Request header blocks as received (a plain request's lines after its first, joined by CRLF), each
#: with its :class:`~powerlb.headers.SharedHeaders`: a client sends the same block again and again.
KNOWN_REQUEST_BLOCKS: BlockMemo[Headers] = BlockMemo(256)


def _simple_headers(block: bytes, max_headers: int) -> Optional[Headers]:
    """The headers of a plain request's header ``block`` of at most ``max_headers`` lines (see
    :func:`parse_simple_request`), else None; remembered in :data:`KNOWN_REQUEST_BLOCKS` when seen
    before and they may be."""
    lines = block.split(b"\r\n")
    # Its only CR and LF bytes end its lines, and it has no NUL: no field value needs a check.
    breaks = len(lines) - 1
    if len(lines) > max_headers or block.count(b"\r") != breaks or block.count(b"\n") != breaks or 0 in block:
        return None
    headers: Headers = []
    names = KNOWN_NAMES
    fields = KNOWN_FIELDS
    host = False
    for line in lines:
        header = fields.get(line)
        if header is None:
            name, colon, value = line.partition(b":")
            if not colon:
                return None
            lowered = names.get(name) or token_name(name)
            if lowered is None:
                return None
            header = (lowered, value.strip(b" \t"))
            remember_field(line, header)
        lowered = header[0]
        if lowered in _NOT_SIMPLE or (host and lowered == b"host"):
            return None
        host = host or lowered == b"host"
        headers.append(header)
    if not KNOWN_REQUEST_BLOCKS.seen_before(block) or not rememberable(block, headers):
        return headers
    shared = SharedHeaders(headers)
    KNOWN_REQUEST_BLOCKS.remember(block, shared)
    return shared


#: Bytes per second a request body must average once ``client_timeout`` has passed (slow-body attacks).
MIN_BODY_RATE = 1024


class ProxyRequest(Request):
    """A twisted.web request whose body streams to the backend as it arrives.

    twisted.web reads a whole body before it renders a request; here a
    request with a body is rendered as soon as its headers are complete, and
    the body flows into a :class:`~powerlb.upstream.BodyStream` (``body_stream``)
    that the upstream connection drains with flow control, so an upload of
    any size passes with bounded memory. A body may not grow past the
    listener's ``max_body`` (413), nor arrive slower than ``client_timeout``
    plus one second per :data:`MIN_BODY_RATE` bytes (408).

    The request path notes on it what :class:`~powerlb.outcomes.Outcomes`
    counts once it is finished: ``dispatch``, its way to a backend (None when
    it went to none), and ``x_cache``, its cache result (``b""`` when none).

    powerlb's own attributes are slots: twisted.web's request already has so
    many attributes that a few more would make CPython turn its compact
    (shared-key) instance dict into a dict of its own for every request.
    """

    __slots__ = (
        "_body_size",
        "_body_started",
        "_finish_pending",
        "_gone",
        "body_stream",
        "dispatch",
        "parsed_headers",
        "plan",
        "request_id",
        "x_cache",
    )

    channel: ProxyChannel

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The request's header list (names lower-cased) when the channel parsed it in one pass, else None.
        self.parsed_headers: Optional[Headers] = None
        self.body_stream: Optional[BodyStream] = None
        self.dispatch: Any = None
        #: The planner's decision when the channel had it made already (see ProxyChannel._fast_hit).
        self.plan: Optional[Decision] = None
        #: The request id the plan gave (for the access log), None when none.
        self.request_id: Optional[bytes] = None
        self.x_cache = b""
        self._body_size = 0
        self._body_started = 0.0
        self._finish_pending = False
        self._gone: Optional[Callable[[Failure], None]] = None

    @classmethod
    def for_plain(cls, channel: ProxyChannel) -> ProxyRequest:
        """A request for :meth:`serve_plain`, made without twisted.web's constructors: the attributes
        they set (``tests/inproc/test_channel.py`` checks that they are the same), and powerlb's.
        No ``__init__`` runs: a subclass with state of its own per request sets it here too."""
        self = cls.__new__(cls)
        self.notifications = []
        self.channel = channel
        self.client = channel.getPeer()
        self.host = channel.getHost()
        self.requestHeaders = TwistedHeaders()
        self.received_cookies = {}
        self.responseHeaders = TwistedHeaders()
        self.cookies = []
        self.transport = channel.transport
        self.queued = False
        self._parsePOSTFormSubmission = channel.site._parsePOSTFormSubmission
        self._adapterCache = {}
        self.parsed_headers = self.body_stream = self.dispatch = self.plan = self.request_id = None
        self._gone = None
        self.x_cache = b""
        self._body_size = 0
        self._body_started = 0.0
        self._finish_pending = False
        return self

    def when_gone(self, callback: Callable[[Failure], None]) -> None:
        """Have ``callback`` called with the reason if the client goes before the response is finished:
        what an errback on ``notifyFinish()`` does, without a Deferred per request."""
        self._gone = callback

    def connectionLost(self, reason: Failure) -> None:
        super().connectionLost(reason)
        gone, self._gone = self._gone, None
        if gone is not None:
            gone(reason)

    def gotLength(self, length: Optional[int]) -> None:
        channel = self.channel
        if length is not None and length > channel.site.limits.max_body:
            self.body_too_large()
            return
        if length == 0:
            super().gotLength(length)
            return
        self.content = io.BytesIO()
        self._body_started = channel.site.reactor.seconds()
        self.body_stream = BodyStream(length, self.body_source())
        self.headers_complete()

    def body_source(self) -> Any:
        """The producer that the body stream pauses while the backend is slow: the client connection."""
        return self.channel.transport

    def headers_complete(self) -> None:
        """Render a request with a body as soon as its headers are in (twisted.web would wait for the body).

        An HTTP/1.1 request's headers are complete when its length is known.
        """
        channel = self.channel
        Request.requestReceived(self, channel._command, channel._path, channel._version)

    def reject(self, status: int, reason: str) -> None:
        """Answer ``status`` with a short ``reason`` instead of the request; the connection closes."""
        self.channel.reject(status, reason)

    def send_response(
        self, status: int, reason: bytes, headers: Headers, x_cache: bytes, body: bytes, forward: bool
    ) -> None:
        """The whole response at once: its head (as :meth:`send_head` makes it) and ``body`` in one
        write, and its end."""
        if self.send_head(status, reason, headers, x_cache, forward) and body:
            if self.chunked:
                self.write(body)
            else:
                self.sentLength += len(body)
                self.channel.write(body)
        self.finish()

    def send_head(self, status: int, reason: bytes, headers: Headers, x_cache: bytes, forward: bool) -> bool:
        """Start the response: ``headers`` (names lower-cased) plus ``X-Cache``; with ``forward``
        they are a backend's, to be forwarded as they are written (hop-by-hop ones dropped, ``Via``
        added: :func:`~powerlb.responses.forwarded_header_lines`), else they are the client's already.

        What twisted.web's first ``write`` does, but written in one block built
        straight from the list (names in twisted.web's case, :data:`~powerlb.responses.wire_name`),
        with no twisted.web header object: the
        ``Date`` twisted.web set is kept only when the response has none, and
        its ``Connection: close`` (a closing connection) is kept; a body of
        unknown length to an HTTP/1.1 client is chunked; HEAD, 1xx, 204 and 304
        responses get no body. Whether a body follows (False also when the client is gone).
        """
        self.setResponseCode(status, reason or None)
        self.x_cache = x_cache
        if self._disconnected:
            return False
        self.startedWriting = 1
        version = self.clientproto
        parts = [version, b" %d " % status, self.code_message, b"\r\n"]
        found = forwarded_header_lines(parts, headers) if forward else None
        if found is None:
            found = header_lines(parts, forward_response_headers(headers) if forward else headers)
        dated, framed = found
        if not dated:
            parts += (b"Date: ", http_date(int(self.channel.site.reactor.seconds())), b"\r\n")
        # (Only a connection that is closing has a request whose response says so: checkPersistence,
        # close_after_requests.)
        connection = None if self.channel.persistent else self.responseHeaders.getRawHeaders(b"connection")
        if connection:
            parts += (b"Connection: ", connection[0], b"\r\n")
        bodiless = self.method == b"HEAD" or status in NO_BODY_CODES
        if not framed and not bodiless and version == b"HTTP/1.1":
            self.chunked = 1
            parts.append(b"Transfer-Encoding: chunked\r\n")
        parts += (b"X-Cache: ", x_cache, b"\r\n\r\n")
        self.channel.write_head(b"".join(parts))
        if bodiless:
            self.write = lambda data: None  # type: ignore[method-assign]  # what the resource writes is dropped
        return not bodiless

    def body_too_large(self) -> None:
        """The body is, or is announced as, larger than ``max_body``: 413 (or a cut once answering)."""
        self._cut(413, "request body larger than the limit")

    def abort(self) -> None:
        """Cut the response off: after its status line only a cut connection tells the client."""
        self.channel.transport.abortConnection()

    def handleContentChunk(self, data: bytes) -> None:
        self._body_size += len(data)
        site = self.channel.site
        if self._body_size > site.limits.max_body:
            self.body_too_large()
            return
        allowed = site.limits.client_timeout + self._body_size / MIN_BODY_RATE
        if site.reactor.seconds() - self._body_started > allowed:
            self._cut(408, "request body arriving too slowly")
            return
        if not self.finished:
            assert self.body_stream is not None  # made by gotLength for a request with a body
            self.body_stream.feed(data)

    def serve_plain(
        self, method: bytes, target: bytes, headers: Headers, decision: Optional[Decision]
    ) -> None:
        """Render a plain request the channel parsed in one pass (``headers``, names lower-cased; the
        planner's ``decision`` when it was asked already): what twisted.web's ``requestReceived`` and
        ``process`` do, less what the proxy never reads (query arguments, cookies, the header object,
        the resource tree walk, the default headers). Its ``requestHeaders`` stay empty."""
        self.method = method
        self.uri = target
        self.path = target.partition(b"?")[0]
        self.clientproto = b"HTTP/1.1"
        self.args = {}
        self.parsed_headers = headers
        self.plan = decision
        site = self.site = self.channel.site
        try:
            self.render(site.resource)
        except BaseException:
            self.processingFailed(Failure())

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        stream = self.body_stream
        if stream is None:
            super().requestReceived(command, path, version)
            return
        stream.finish()  # rendered already; this is the end of the body
        if self._finish_pending:
            self._end()

    def finish(self) -> None:
        stream = self.body_stream
        if stream is not None and not stream.complete:
            # Answered before the whole body arrived: the rest is read and dropped
            # (BodyStream.detach), and the response ends once it is in.
            self._finish_pending = True
            return
        self._end()

    def _end(self) -> None:
        # A client leaving from now on abandons nothing; and with the callback (the responder's
        # bound method) gone, the request and its responder hold no cycle: freed by reference
        # counting as the response ends, not by the garbage collector later.
        self._gone = None
        super().finish()

    def _cut(self, status: int, reason: str) -> None:
        # Closing the connection also abandons the upstream request (the responder sees the client go).
        if self.startedWriting:
            self.abort()
        else:
            self.reject(status, reason)


class TrackedChannel(HTTPChannel):
    """An ``HTTPChannel`` that tells its site when it opens and closes (for limits and draining)."""

    site: QuietSite  # set by the site as it builds the channel
    transport: IConnectionTransport  # connected before any read

    def connectionMade(self) -> None:
        self.site.connection_opened(self)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.connection_closed(self)
        super().connectionLost(reason)

    def close_after_requests(self) -> None:
        """Serve the requests in progress, then close (their responses say ``Connection: close``)."""
        if self.persistent:
            self.persistent = False
            for request in self.requests:
                if not request.startedWriting:
                    request.responseHeaders.setRawHeaders(b"connection", [b"close"])


class _LimitedChunkedDecoder(_ChunkedTransferDecoder):
    """twisted.web's chunked body decoder that stops at once at a chunk size past the body limit.

    Without it a chunk announced as, say, 2^96 bytes would be waited for.
    """

    def __init__(self, decoder: _ChunkedTransferDecoder, limit: int, too_large: Callable[[], None]) -> None:
        super().__init__(decoder.dataCallback, decoder.finishCallback)
        self._left = limit
        self._too_large = too_large

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        if not super()._dataReceived_CHUNK_LENGTH():
            return False
        self._left -= self.length
        if self._left < 0:
            self._too_large()
            raise _MalformedChunkedDataError("chunk sizes add up past the body limit")
        return True


class ProxyChannel(TrackedChannel):
    """twisted.web's HTTP/1.1 channel with powerlb's request limits (see the module docstring).

    While a request head arrives (from its first byte to its blank line) reads
    do not restart the idle timer, so the timer itself cuts a head still
    incomplete ``client_timeout`` after its first byte, with 408. While a
    plain request (:meth:`_plain_request`) or a fast hit is answered the timer
    keeps running instead of being cancelled and made again (twisted.web's
    way): the end of the request only notes the time (``_idle_from``), and the
    timer, when it fires, re-arms for whatever idle time is left, so a
    keep-alive connection schedules no timer per request.
    """

    site: ProxySite
    requestFactory: Type[ProxyRequest]  # the site's
    _head_pending = False
    _host_address: Any = None
    _peer_address: Any = None
    _in_head = False
    _host_seen = False
    _head_bytes = 0
    _head_lines = 0
    _rejected = False
    _secure = False
    _held_head: Optional[bytes] = None
    #: When the connection last went idle on the short way (the idle timer counts from here when it fires).
    _idle_from = 0.0
    #: The tunnel this connection became after a protocol switch (:mod:`powerlb.tunnel`), or None.
    tunnel: Any = None

    def connectionMade(self) -> None:
        limits = self.site.limits
        # Lines longer than any limit allows are cut by LineReceiver itself.
        self.MAX_LENGTH = max(limits.max_url_length + 64, limits.max_header_size)
        self.totalHeadersSize = limits.max_header_size + limits.max_url_length + 64
        self.maxHeaders = limits.max_headers + 1
        self._secure = ISSLTransport.providedBy(self.transport)
        #: The connection's scheme and client host, as every request of it is forwarded with.
        self.scheme = b"https" if self._secure else b"http"
        self.client_host = peer_host(self.getPeer())
        super().connectionMade()

    def dataReceived(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.client_data(data)
            return
        if self._rejected:
            return
        if self._head_pending:
            LineReceiver.dataReceived(self, data)  # the idle timer keeps running (see the class docstring)
            return
        if self.line_mode and not self._handlingRequest:
            # The first bytes of a request.
            if not self.requests and not self._buffer and self.persistent:
                simple = parse_simple_request(data, self.site.limits)
                if simple is not None:
                    answered, decision = self._fast_hit(*simple)
                    if answered:
                        self._idle_from = self.site.reactor.seconds()
                    else:  # the timer keeps running (see the class docstring)
                        self._plain_request(*simple, decision)
                    return
            self._head_pending = True
        super().dataReceived(data)

    def isSecure(self) -> bool:
        """Whether the connection is TLS (known from its start, not asked per request)."""
        return self._secure

    def getHost(self) -> Any:
        """The local address, asked of the socket once per connection rather than once per request."""
        if self._host_address is None:
            self._host_address = self.transport.getHost()
        return self._host_address

    def getPeer(self) -> Any:
        """The client's address (the same for every request of the connection)."""
        if self._peer_address is None:
            self._peer_address = self.transport.getPeer()
        return self._peer_address

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.tunnel is not None:
            self.tunnel.client_lost()
        super().connectionLost(reason)

    def switch_protocols(self, tunnel: Any) -> bytes:
        """Stop speaking HTTP (a 101 was relayed): every byte read from now on goes to
        ``tunnel.client_data``, the connection's end to ``tunnel.client_lost``. Returns the bytes
        already read past the request (the new protocol's first ones); the tunnel paces the reads."""
        self.tunnel = tunnel
        self.setTimeout(None)
        self.transport.unregisterProducer()
        early = b"".join(self._dataBuffer)
        self._dataBuffer = []
        return early

    def timeoutConnection(self) -> None:
        if self._head_pending:
            self.reject(408, "request headers not received in time")
        elif self._handlingRequest:
            self.setTimeout(self.timeOut)  # a request being answered is no idleness
        else:
            idle_timeout = self.timeOut
            assert idle_timeout is not None  # the timer that fired was set with it
            left = self._idle_from + idle_timeout - self.site.reactor.seconds()
            if left <= 0:
                super().timeoutConnection()
                return
            self.setTimeout(left)  # idle since _idle_from only: the timer waits for the rest
            self.timeOut = idle_timeout

    def write_head(self, head: bytes) -> None:
        """Hold a response head until the first write of its body, or the response's end, so that
        head and body go out in one write."""
        self._held_head = head

    def write(self, data: bytes) -> None:
        """Write response bytes (see :func:`~powerlb.transport.write_now`), after a held head."""
        head = self._held_head
        if head is None:
            write_now(self.transport, data)
        else:
            self._held_head = None
            write_now(self.transport, head, data)

    def writeSequence(self, iovec: Sequence[bytes]) -> None:
        head = self._held_head
        if head is None:
            write_now(self.transport, *iovec)
        else:
            self._held_head = None
            write_now(self.transport, head, *iovec)

    def requestDone(self, request: Any) -> None:
        if self._held_head is not None:
            self.write(b"")  # a response without a body: its head
        self._idle_from = self.site.reactor.seconds()  # a plain request's timer kept running
        if request.parsed_headers is not None and not self._dataBuffer and self.persistent:
            # A plain request (_plain_request) with nothing read after it: what HTTPChannel's
            # requestDone does, less resuming the reads, which nothing paused (a pipelined request
            # arriving meanwhile would be in _dataBuffer), and the saved timeout, which it has none of.
            del self.requests[0]
            self._handlingRequest = False
            self.line_mode = 1
            return
        super().requestDone(request)

    def lineReceived(self, line: bytes) -> None:
        if self._in_head:
            if not line:
                self._in_head = self._head_pending = False
                self.resetTimeout()  # the body's time starts now
            elif not self._check_header_line(line):
                return
        elif line and not self._start_request(line):
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._in_head:
            self.reject(431, "request header line too long")
        else:
            self.reject(414, "request target longer than the limit")

    def reject(self, status: int, reason: str) -> None:
        """Answer ``status`` with ``reason`` and close the connection; ignore anything more."""
        if self._rejected:
            return
        self._rejected = True
        self._in_head = self._head_pending = False
        self.transport.write(plain_response(status, reason))
        self.transport.loseConnection()

    def checkPersistence(self, request: Request, version: bytes) -> bool:
        # twisted.web looks for "close" in the first Connection field only, split at spaces.
        options = split_tokens(request.requestHeaders.getRawHeaders(b"connection", []))
        if b"close" in {option.lower() for option in options}:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        persistent: bool = super().checkPersistence(request, version)
        return persistent

    def _maybeChooseTransferDecoder(self, header: bytes, data: bytes) -> bool:
        ok: bool = super()._maybeChooseTransferDecoder(header, data)
        decoder = self._transferDecoder
        if ok and type(decoder) is _ChunkedTransferDecoder:
            limit = self.site.limits.max_body
            self._transferDecoder = _LimitedChunkedDecoder(decoder, limit, self.requests[-1].body_too_large)
        return ok

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's answer to malformed requests, with a reason and a body.
        self.reject(400, "malformed request")

    # -- internals -------------------------------------------------------

    def _fast_hit(self, method: bytes, target: bytes, headers: Headers) -> Tuple[bool, Optional[Decision]]:
        """Answer a plain request from the cache with ready bytes, if the site can: whether it did, and
        the planner's decision when it was asked (the request carries it on, not asking again)."""
        site = self.site
        if site.fast_answer is None:
            return False, None
        peer = self.getPeer()
        response, decision = site.fast_answer(
            method, target, headers, self._secure, getattr(peer, "host", "")
        )
        if response is None:
            return False, decision
        write_now(self.transport, *response)
        request_id = decision.request_id  # type: ignore[union-attr]  # a response comes with a RequestPlan
        site.outcomes.fast_hit(peer, method, target, headers, response, request_id)
        return True, decision

    def _plain_request(
        self, method: bytes, target: bytes, headers: Headers, decision: Optional[Decision] = None
    ) -> None:
        """Start the request :func:`parse_simple_request` read, as twisted.web would once its head is in.

        (``HTTPChannel.lineReceived``, ``headerReceived``, ``allHeadersReceived``
        and ``allContentReceived`` for a request without a body or
        ``Connection`` handling, which leaves the connection persistent.)
        ``decision`` is the planner's, when the short way for cache hits asked it.
        """
        request = self.requestFactory.for_plain(self)
        self.requests.append(request)
        self._savedTimeOut = None  # the idle timer keeps running (see the class docstring)
        self._handlingRequest = True
        self.setRawMode()
        request.serve_plain(method, target, headers, decision)

    def _start_request(self, line: bytes) -> bool:
        limits = self.site.limits
        parts = line.split(b" ")
        if len(parts) == 3 and len(parts[1]) > limits.max_url_length:
            self.reject(414, "request target longer than the limit")
            return False
        if len(parts) == 3 and not _target_ok(parts[1]):
            self.reject(400, "malformed request target")
            return False
        self._in_head = True
        self._host_seen = False
        self._head_bytes = len(line)
        self._head_lines = 0
        return True

    def _check_header_line(self, line: bytes) -> bool:
        limits = self.site.limits
        self._head_bytes += len(line) + 2
        self._head_lines += 1
        host = line[:5].lower() == b"host:"
        if self._head_bytes > limits.max_header_size + limits.max_url_length:
            self.reject(431, "request headers larger than the limit")
        elif self._head_lines > limits.max_headers:
            self.reject(431, "too many request header lines")
        elif line[0] in b" \t":
            self.reject(400, "obsolete line folding in request headers")
        elif 13 in line or 0 in line:  # CR, NUL (byte values: a memchr, not a substring search)
            self.reject(400, "bare CR or NUL in request headers")
        elif host and self._host_seen:
            self.reject(400, "more than one Host header (RFC 9112 section 3.2)")
        else:
            self._host_seen = self._host_seen or host
            return True
        return False


class NegotiatingChannel(Protocol):
    """A TLS connection's protocol until ALPN has spoken: HTTP/1.1 (``channel``) or HTTP/2.

    The first bytes come after the handshake, so the negotiated protocol is
    known then: for ``h2`` the site's ``h2_protocol()`` takes the connection
    over from the HTTP/1.1 channel, which never saw a byte.
    """

    transport: IConnectionTransport

    def __init__(self, channel: ProxyChannel) -> None:
        self.channel: Protocol = channel
        self._negotiated = False

    def makeConnection(self, transport: IConnectionTransport) -> None:
        self.transport = transport
        self.channel.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        if not self._negotiated:
            self._negotiated = True
            if getattr(self.transport, "negotiatedProtocol", None) == b"h2":
                self._switch_to_h2()
        self.channel.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.channel.connectionLost(reason)

    def _switch_to_h2(self) -> None:
        http11 = self.channel
        assert isinstance(http11, ProxyChannel)  # the switch comes with the first read
        site = http11.site
        assert site.h2_protocol is not None  # this channel exists only when there is one
        http11.setTimeout(None)
        self.transport.unregisterProducer()
        site.connection_closed(http11)
        h2 = self.channel = site.h2_protocol()
        h2.makeConnection(self.transport)
        self.transport.registerProducer(h2, True)


class _Refusal(Protocol):
    """Answers 503 at once and closes: the connection limit is reached."""

    transport: IConnectionTransport

    def connectionMade(self) -> None:
        self.transport.write(plain_response(503, "too many connections"))
        self.transport.loseConnection()


class ClientConnection(TypingProtocol):
    """An open client connection as its site keeps it (``channels``, for draining): a
    :class:`TrackedChannel`, or an HTTP/2 connection (:class:`powerlb.http2.ProxyH2Connection`)."""

    @property
    def transport(self) -> IConnectionTransport: ...

    @property
    def requests(self) -> Sequence[object]:
        """The requests in progress."""

    def loseConnection(self) -> None: ...

    def close_after_requests(self) -> None:
        """Serve the requests in progress, then close."""


class QuietSite(Site):
    """A ``Site`` that logs no requests.

    twisted.web logs every request to the Twisted log by default, which costs
    more per request than the proxying itself; powerlb's access log is
    :mod:`powerlb.accesslog`. ``channels`` holds the open client connections
    (for draining).
    """

    # Twisted's stub types it as its own factory of HTTP/1.1-or-2 wrappers; any channel class will do.
    protocol = TrackedChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, reactor: Any) -> None:
        super().__init__(resource, reactor=reactor)
        self.noisy = False
        self.channels: Set[ClientConnection] = set()

    def acceptableProtocols(self) -> List[bytes]:
        """HTTP/1.1 only over ALPN: the channel is twisted.web's HTTP/1.1 one (Twisted's own would offer
        ``h2`` whenever h2 is installed)."""
        return [b"http/1.1"]

    def connection_opened(self, channel: ClientConnection) -> None:
        self.channels.add(channel)

    def connection_closed(self, channel: ClientConnection) -> None:
        self.channels.discard(channel)

    def log(self, request: Any) -> None:
        """Nothing: requests are not logged here."""


class ProxySite(QuietSite):
    """The client-facing ``Site``: powerlb's channel and request, limits, a connection cap, fast hits.

    Every finished request, and every fast hit, goes to ``outcomes`` (counts and access log).
    """

    protocol = ProxyChannel
    requestFactory = ProxyRequest

    def __init__(self, resource: Any, reactor: Any, config: Config, outcomes: Outcomes) -> None:
        super().__init__(resource, reactor)
        self.outcomes = outcomes
        self.timeOut = config.client_timeout
        self.limits = Limits(config)
        self.max_connections = config.max_connections
        #: Answers plain cache hits (see :data:`powerlb.interfaces.FastAnswer`).
        self.fast_answer: Optional[FastAnswer] = None
        #: Builds the HTTP/2 connection of a TLS connection that negotiated ``h2`` (ALPN);
        #: None: HTTP/1.1 only (set for TLS listeners when HTTP/2 support is installed).
        self.h2_protocol: Optional[Callable[[], ProxyH2Connection]] = None

    def acceptableProtocols(self) -> List[bytes]:
        """The protocols offered over ALPN: ``h2`` only when a connection can switch to it."""
        return [b"h2", b"http/1.1"] if self.h2_protocol is not None else [b"http/1.1"]

    def log(self, request: Any) -> None:
        """Called by twisted.web as each request finishes."""
        self.outcomes.completed(request)

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.channels) >= self.max_connections:
            return _Refusal()
        channel = super().buildProtocol(addr)
        return channel if self.h2_protocol is None else NegotiatingChannel(channel)
