"""The client-facing HTTP server: twisted.web's channel with the limits a load balancer needs.

:class:`ProxyChannel` is twisted.web's ``HTTPChannel`` with stricter input
rules checked as the request arrives: a request target over
``max_url_length`` gets 414, a header section over ``max_header_size`` or
``max_headers`` lines 431, a body over ``max_body`` 413, obsolete line
folding and bare CR 400 (with twisted.web's own rejections of conflicting
``Content-Length`` / ``Transfer-Encoding`` framing, also 400); each is a
short plain-text answer after which the connection is closed, so nothing
ambiguous ever reaches a backend. A client that dribbles its headers is cut
with 408 once ``client_timeout`` has passed since its request began
(slowloris); one that goes silent is cut by the channel's idle timeout.
:class:`ProxySite` refuses connections beyond ``max_connections`` with 503.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.protocol import Protocol
from twisted.web.http import HTTPChannel
from twisted.web.server import Request, Site

from powerlb.config import Config

_STATUS_TEXT = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}


def plain_response(status: int, reason: str) -> bytes:
    """A complete ``Connection: close`` response with a one-line plain-text body."""
    phrase = _STATUS_TEXT[status]
    body = b"%d %s: %s\n" % (status, phrase, reason.encode())
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\nserver: powerlb\r\n\r\n%s" % (status, phrase, len(body), body)
    )


class Limits:
    """The request limits of one listener, from the config."""

    __slots__ = ("client_timeout", "max_body", "max_header_size", "max_headers", "max_url_length")

    def __init__(self, config: Config) -> None:
        self.client_timeout = config.client_timeout
        self.max_body = config.max_body
        self.max_header_size = config.max_header_size
        self.max_headers = config.max_headers
        self.max_url_length = config.max_url_length


class ProxyRequest(Request):
    """A twisted.web request whose body may not grow past the listener's ``max_body``."""

    _body_size = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._body_size += len(data)
        channel = self.channel
        if self._body_size > channel.site.limits.max_body:
            channel.reject(413, "request body larger than the limit")
            return
        super().handleContentChunk(data)


class ProxyChannel(HTTPChannel):
    """twisted.web's HTTP/1.1 channel with powerlb's request limits (see the module docstring)."""

    _in_head = False
    _head_started = 0.0
    _head_bytes = 0
    _head_lines = 0
    _rejected = False

    def connectionMade(self) -> None:
        limits = self.site.limits
        # Lines longer than any limit allows are cut by LineReceiver itself.
        self.MAX_LENGTH = max(limits.max_url_length + 64, limits.max_header_size)
        self.totalHeadersSize = limits.max_header_size + limits.max_url_length + 64
        self.maxHeaders = limits.max_headers + 1
        self.site.connection_opened(self)
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        self.site.connection_closed(self)
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._rejected:
            return
        if self._in_head and self._head_overdue():
            self.reject(408, "request headers not received in time")
            return
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._in_head:
            if not line:
                self._in_head = False
                super().lineReceived(line)
                self._check_length()
                return
            if not self._check_header_line(line):
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
        self._in_head = False
        self.transport.write(plain_response(status, reason))
        self.transport.loseConnection()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # twisted.web's answer to malformed requests, with a reason and a body.
        self.reject(400, "malformed request")

    # -- internals -------------------------------------------------------

    def _head_overdue(self) -> bool:
        site = self.site
        return site.reactor.seconds() - self._head_started > site.limits.client_timeout

    def _start_request(self, line: bytes) -> bool:
        limits = self.site.limits
        parts = line.split(b" ")
        if len(parts) == 3 and len(parts[1]) > limits.max_url_length:
            self.reject(414, "request target longer than the limit")
            return False
        self._in_head = True
        self._head_started = self.site.reactor.seconds()
        self._head_bytes = len(line)
        self._head_lines = 0
        return True

    def _check_header_line(self, line: bytes) -> bool:
        limits = self.site.limits
        self._head_bytes += len(line) + 2
        self._head_lines += 1
        if self._head_bytes > limits.max_header_size + limits.max_url_length:
            self.reject(431, "request headers larger than the limit")
        elif self._head_lines > limits.max_headers:
            self.reject(431, "too many request header lines")
        elif line[0] in b" \t":
            self.reject(400, "obsolete line folding in request headers")
        elif b"\r" in line or b"\x00" in line:
            self.reject(400, "bare CR or NUL in request headers")
        else:
            return True
        return False

    def _check_length(self) -> None:
        length = self.length
        if length is not None and length > self.site.limits.max_body:
            self.reject(413, "request body larger than the limit")


class _Refusal(Protocol):
    """Answers 503 at once and closes: the connection limit is reached."""

    def connectionMade(self) -> None:
        self.transport.write(plain_response(503, "too many connections"))
        self.transport.loseConnection()


class ProxySite(Site):
    """The client-facing ``Site``: powerlb's channel and request, a connection limit, quiet logging.

    twisted.web logs every request to the Twisted log by default, which costs
    more per request than the proxying itself; here nothing is formatted
    unless an access log is configured.
    """

    protocol = ProxyChannel
    requestFactory = ProxyRequest

    def __init__(self, resource: Any, reactor: Any, config: Config) -> None:
        access_log = config.access_log
        super().__init__(resource, logPath=None if access_log in (None, "-") else access_log, reactor=reactor)
        self.timeOut = config.client_timeout
        self.noisy = False
        self.limits = Limits(config)
        self.max_connections = config.max_connections
        self.channels: set[ProxyChannel] = set()
        self._access_log: Optional[str] = access_log

    def buildProtocol(self, addr: Any) -> Any:
        if len(self.channels) >= self.max_connections:
            return _Refusal()
        return super().buildProtocol(addr)

    def connection_opened(self, channel: ProxyChannel) -> None:
        self.channels.add(channel)

    def connection_closed(self, channel: ProxyChannel) -> None:
        self.channels.discard(channel)

    def log(self, request: Any) -> None:
        if self._access_log is not None:
            super().log(request)
