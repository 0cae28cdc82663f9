"""Sans-IO HTTP/1.1 for the upstream side: a response parser and a request serializer (and the
interim responses relayed to clients).

:class:`ResponseParser` is fed the bytes a backend sends and calls an
:class:`IResponseEvents` handler with the status line and headers, body
pieces, and the end of each response, or with the whole response in one
event when it is all in hand as its head is read (the common small response,
and every bodiless one). It never touches a socket or a clock,
so it is tested by feeding it bytes split at every possible place.

Interim (1xx) responses are reported apart from the final response
(:meth:`IResponseEvents.response_interim`); ``101`` (a protocol switch) is
refused, except by a parser made with ``upgrade=True`` for an upgrade request
(:meth:`IResponseEvents.response_switched`, see :mod:`powerlb.tunnel`).
Framing follows RFC 9112 section 6.3: no body for HEAD, 1xx, 204 and 304;
chunked when ``Transfer-Encoding`` ends in ``chunked``; ``Content-Length``
otherwise; else the body runs to the end of the connection.
"""

from __future__ import annotations

import re
from typing import Optional

from zope.interface import Interface

from powerlb.headers import (
    KNOWN_FIELDS,
    KNOWN_NAMES,
    BlockMemo,
    Headers,
    SharedHeaders,
    connection_tokens,
    field_value_ok,
    remember_field,
    rememberable,
    split_tokens,
    token_name,
)

MAX_HEAD_SIZE = 64 * 1024
MAX_CHUNK_LINE = 4096

_HEX = frozenset(b"0123456789abcdefABCDEF")
#: What a reason phrase may hold (RFC 9112 4: HTAB, SP, VCHAR, obs-text): it is relayed to clients.
_REASON_CHARS = frozenset(b"\t" + bytes(range(0x20, 0x7F)) + bytes(range(0x80, 0x100)))
#: A valid status line at once (what :func:`_parse_status_line_by_parts` accepts): the minor
#: version, the code and the reason (None when the line ends after the code).
_STATUS_LINE = re.compile(rb"HTTP/1\.([0-9]) ([1-9][0-9][0-9])(?: ([^\x00-\x08\x0a-\x1f\x7f]*))?")
#: The headers that decide the framing and the reuse of the connection.
_FRAMING_NAMES = frozenset({b"connection", b"content-length", b"transfer-encoding"})


class ProtocolError(Exception):
    """The backend sent something that is not a valid HTTP/1.1 response."""


class IResponseEvents(Interface):
    """What a :class:`ResponseParser` reports as it reads a response."""

    def response_interim(status: int, reason: bytes, headers: Headers) -> None:
        """An interim (1xx, not 101) status line and headers arrived; the final response follows."""

    def response_head(status: int, reason: bytes, headers: Headers) -> None:
        """The final status line and headers (names lower-cased) arrived."""

    def response_body(data: bytes) -> None:
        """A piece of the (de-chunked) body arrived."""

    def response_end(keep_alive: bool) -> None:
        """The response is complete; ``keep_alive`` says whether the connection may be reused."""

    def response_whole(status: int, reason: bytes, headers: Headers, body: bytes, keep_alive: bool) -> None:
        """A whole final response at once, instead of its head, body and end (as those three say)."""


class IUpgradeEvents(IResponseEvents):
    """What a :class:`ResponseParser` made with ``upgrade=True`` also reports: a protocol switch."""

    def response_switched(reason: bytes, headers: Headers, rest: bytes) -> None:
        """A ``101`` (upgrade parsers only): the connection now speaks another protocol, whose
        first bytes are ``rest``; the parser reads nothing more."""


# Parser states.
_IDLE, _HEAD, _LENGTH, _CHUNK_SIZE, _CHUNK_DATA, _CHUNK_CRLF, _TRAILERS, _UNTIL_CLOSE, _SWITCHED = range(9)


class ResponseParser:
    """Incremental parser of the responses on one backend connection.

    Call :meth:`expect` before each request is sent (it tells whether the
    response can have a body), then :meth:`feed` every byte received and
    :meth:`feed_eof` when the connection closes. Errors raise
    :class:`ProtocolError`; after one the parser must be discarded.
    """

    __slots__ = ("_buffer", "_events", "_head_request", "_keep_alive", "_remaining", "_state", "_upgrade")

    def __init__(self, events: IResponseEvents, upgrade: bool = False) -> None:
        self._events = events
        #: A 101 switches protocols (the request asked for an upgrade) instead of being an error.
        self._upgrade = upgrade
        self._state = _IDLE
        self._buffer = b""
        self._remaining = 0
        self._keep_alive = True
        self._head_request = False

    @property
    def idle(self) -> bool:
        """True between responses (nothing expected, nothing half-read)."""
        return self._state == _IDLE

    def expect(self, head_request: bool) -> None:
        """Prepare for the response to the request about to be sent."""
        if self._state != _IDLE:
            raise ProtocolError("a response is already in progress")
        self._head_request = head_request
        self._state = _HEAD
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """Consume bytes from the backend, reporting events as they complete."""
        if self._buffer:
            data = self._buffer + data
            self._buffer = b""
        while data:
            state = self._state
            if state == _LENGTH:
                remaining = self._remaining
                if len(data) < remaining:
                    self._remaining = remaining - len(data)
                    self._events.response_body(data)
                    return
                self._events.response_body(data[:remaining])
                data = data[remaining:]
                self._finish()
            elif state == _UNTIL_CLOSE:
                self._events.response_body(data)
                return
            elif state == _HEAD:
                data = self._parse_head(data)
            elif state == _CHUNK_DATA:
                remaining = self._remaining
                if len(data) <= remaining:
                    self._remaining = remaining - len(data)
                    if self._remaining == 0:
                        self._state = _CHUNK_CRLF
                    self._events.response_body(data)
                    return
                self._events.response_body(data[:remaining])
                data = data[remaining:]
                self._state = _CHUNK_CRLF
            elif state == _CHUNK_CRLF:
                if len(data) < 2:
                    self._buffer = data
                    return
                if data[:2] != b"\r\n":
                    raise ProtocolError("chunk data not followed by CRLF")
                data = data[2:]
                self._state = _CHUNK_SIZE
            elif state == _CHUNK_SIZE:
                data = self._parse_chunk_size(data)
            elif state == _TRAILERS:
                data = self._parse_trailers(data)
            else:
                raise ProtocolError("data received while no response was expected")

    def feed_eof(self) -> None:
        """The backend closed the connection: end a close-delimited body, or fail."""
        if self._state == _UNTIL_CLOSE:
            self._state = _IDLE
            self._events.response_end(False)
        elif self._state != _IDLE:
            raise ProtocolError("connection closed before the response was complete")

    # -- internals -------------------------------------------------------

    def _parse_head(self, data: bytes) -> bytes:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            # The terminator could still start up to 3 bytes before the end of
            # ``data``: only give up when even then the head would be too large,
            # so the verdict does not depend on how the bytes were split.
            if len(data) > MAX_HEAD_SIZE + 3:
                raise ProtocolError("response head too large")
            self._buffer = data
            return b""
        if end > MAX_HEAD_SIZE:
            raise ProtocolError("response head too large")
        first = data.find(b"\r\n")  # the end of the status line (``end`` when there are no headers)
        status, reason, keep_alive = _parse_status_line(data[:first])
        block = header_block(data[first + 2 : end]) if first < end else _NO_HEADERS
        headers = block.headers
        rest = data[end + 4 :]
        if 100 <= status < 200:
            if status == 101:
                if not self._upgrade:
                    raise ProtocolError("protocol upgrades are not supported")
                self._state = _SWITCHED
                IUpgradeEvents(self._events).response_switched(reason, headers, rest)
                return b""
            self._events.response_interim(status, reason, headers)
            return rest  # the final response follows
        if block.keep_alive is not None:
            keep_alive = block.keep_alive
        if self._head_request or status == 204 or status == 304:
            self._state = _IDLE
            self._events.response_whole(status, reason, headers, b"", keep_alive)
            return rest
        # Decide the framing (which may reject the response) before reporting
        # the head: a caller must not start relaying a response that then fails.
        framing = block.body
        if framing is None:
            framing = block.body = _body_framing(block.framing)
        state, remaining, reusable = framing
        keep_alive = self._keep_alive = keep_alive and reusable
        if state == _LENGTH and len(rest) >= remaining:
            # All in hand: one event (the state is idle first, as the handler may send the next request).
            self._state = _IDLE
            self._events.response_whole(status, reason, headers, rest[:remaining], keep_alive)
            return rest[remaining:]
        self._events.response_head(status, reason, headers)
        self._state = state
        self._remaining = remaining
        return rest

    def _parse_chunk_size(self, data: bytes) -> bytes:
        end = data.find(b"\r\n")
        if end < 0:
            if len(data) > MAX_CHUNK_LINE + 1:
                raise ProtocolError("chunk size line too long")
            self._buffer = data
            return b""
        if end > MAX_CHUNK_LINE:
            raise ProtocolError("chunk size line too long")
        size_text = data[:end].split(b";", 1)[0].strip()
        if not size_text or len(size_text) > 16 or not _HEX.issuperset(size_text):
            raise ProtocolError("invalid chunk size")
        size = int(size_text, 16)
        if size == 0:
            self._state = _TRAILERS
        else:
            self._remaining = size
            self._state = _CHUNK_DATA
        return data[end + 2 :]

    def _parse_trailers(self, data: bytes) -> bytes:
        # Trailers are dropped (a proxy may discard them); only find their end.
        if data.startswith(b"\r\n"):
            self._finish()
            return data[2:]
        end = data.find(b"\r\n\r\n")
        if end < 0:
            if len(data) > MAX_HEAD_SIZE + 3:
                raise ProtocolError("trailers too large")
            self._buffer = data
            return b""
        if end > MAX_HEAD_SIZE:
            raise ProtocolError("trailers too large")
        _parse_header_lines([b"", *data[:end].split(b"\r\n")])  # malformed trailers are an error too
        self._finish()
        return data[end + 4 :]

    def _finish(self) -> None:
        self._state = _IDLE
        self._events.response_end(self._keep_alive)


class HeaderBlock:
    """What a response's header block says: its headers (names lower-cased), the ones among them
    that frame the body and decide the connection's reuse (:data:`_FRAMING_NAMES`), whether its
    ``Connection`` says ``close`` (False) or ``keep-alive`` (True) or neither (None), and the
    body's framing (:func:`_body_framing`), worked out when a response with a body first asks."""

    __slots__ = ("body", "framing", "headers", "keep_alive")

    def __init__(self, headers: Headers, framing: Headers) -> None:
        self.headers = headers
        self.framing = framing
        tokens = connection_tokens(framing)
        self.keep_alive = False if b"close" in tokens else True if b"keep-alive" in tokens else None
        self.body: Optional[tuple[int, int, bool]] = None


#: Header blocks as received, each with its :class:`HeaderBlock`: a backend answers a resource with
#: the same block until its ``Date`` changes, and the block is read twice a second, not per response.
#: Their headers are :class:`~powerlb.headers.SharedHeaders`: every response with the block has them.
KNOWN_BLOCKS: BlockMemo[HeaderBlock] = BlockMemo(256)
_NO_HEADERS = HeaderBlock(SharedHeaders(()), [])


def header_block(block: bytes) -> HeaderBlock:
    """The :class:`HeaderBlock` of the header lines ``block`` (joined by CRLF, without the last): the
    one :data:`KNOWN_BLOCKS` holds, else parsed (:func:`_parse_header_block`, which raises
    :class:`ProtocolError` at a fault), and remembered when seen before and it may be."""
    known = KNOWN_BLOCKS.get(block)
    if known is not None:
        return known
    headers, framing = _parse_header_block(block)
    if not KNOWN_BLOCKS.seen_before(block) or not rememberable(block, headers):
        return HeaderBlock(headers, framing)
    known = HeaderBlock(SharedHeaders(headers), framing)
    KNOWN_BLOCKS.remember(block, known)
    return known


def _parse_status_line(line: bytes) -> tuple[int, bytes, bool]:
    match = _STATUS_LINE.fullmatch(line)
    if match is None:
        return _parse_status_line_by_parts(line)  # names the fault
    minor, code, reason = match.groups()
    # HTTP/1.1 (and any later 1.x) defaults to persistent connections.
    return int(code), reason or b"", minor != b"0"


def _parse_status_line_by_parts(line: bytes) -> tuple[int, bytes, bool]:
    """The status line read part by part: what :data:`_STATUS_LINE` accepts, and the reason for
    refusing anything else."""
    parts = line.split(b" ", 2)
    if len(parts) < 2:
        raise ProtocolError("invalid status line")
    version, code = parts[0], parts[1]
    if len(version) != 8 or not version.startswith(b"HTTP/1.") or not version[7:].isdigit():
        raise ProtocolError("invalid status line")
    if len(code) != 3 or not code.isdigit() or code < b"100":
        raise ProtocolError("invalid status code")
    reason = parts[2] if len(parts) == 3 else b""
    if not _REASON_CHARS.issuperset(reason):
        raise ProtocolError("invalid reason phrase")
    return int(code), reason, version != b"HTTP/1.0"


def _body_framing(headers: Headers) -> tuple[int, int, bool]:
    """How a response body is delimited: (parser state, length, connection reusable after it)."""
    transfer_encoding = []
    lengths = []
    for k, v in headers:
        if k == b"transfer-encoding":
            transfer_encoding.append(v)
        elif k == b"content-length":
            lengths.append(v)
    if transfer_encoding:
        codings = b",".join(transfer_encoding).lower().split(b",")
        if codings[-1].strip() == b"chunked":
            # Transfer-Encoding overrides Content-Length, but a response with
            # both may be an attempt at response splitting: do not reuse.
            return _CHUNK_SIZE, 0, not lengths
        return _UNTIL_CLOSE, 0, False
    if not lengths:
        return _UNTIL_CLOSE, 0, False
    if len(lengths) == 1 and lengths[0].isdigit():
        length = lengths[0]  # the common case: one plain length
    else:
        # Identical repeated values (separate fields or one list) are accepted.
        distinct = set(split_tokens(lengths))
        if len(distinct) != 1:
            raise ProtocolError("conflicting Content-Length headers")
        (length,) = distinct
        if not length.isdigit():
            raise ProtocolError("invalid Content-Length")
    try:
        return _LENGTH, int(length), True
    except ValueError:  # more digits than CPython converts (sys.get_int_max_str_digits)
        raise ProtocolError("invalid Content-Length") from None


def _parse_header_block(block: bytes) -> tuple[Headers, Headers]:
    """The header lines of ``block``, joined by CRLF (without the last): (all headers, the framing ones
    among them: :data:`_FRAMING_NAMES`).

    A block whose only CR and LF bytes are its line ends, without NUL, whose lines all have a colon
    after a name already known to be a token (:data:`~powerlb.headers.KNOWN_NAMES`) is split with
    no further check; any other is read by :func:`_parse_header_lines`, which checks every line and
    names the fault.
    """
    lines = block.split(b"\r\n")
    breaks = len(lines) - 1
    if 0 not in block and block.count(b"\r") == breaks and block.count(b"\n") == breaks:
        headers = []
        framing = []
        names = KNOWN_NAMES
        fields = KNOWN_FIELDS
        for line in lines:
            header = fields.get(line)
            if header is None:
                name, colon, value = line.partition(b":")
                lowered = names.get(name)
                if lowered is None or not colon:
                    break
                header = (lowered, value.strip(b" \t"))
                remember_field(line, header)
            headers.append(header)
            if header[0] in _FRAMING_NAMES:
                framing.append(header)
        else:
            return headers, framing
    headers = _parse_header_lines([b"", *lines])
    return headers, [header for header in headers if header[0] in _FRAMING_NAMES]


def _parse_header_lines(lines: list[bytes]) -> Headers:
    """The headers of ``lines`` (the first, a status line, skipped), checked line by line."""
    headers: Headers = []
    for line in lines[1:]:
        colon = line.find(b":")
        if colon <= 0:
            raise ProtocolError("invalid header line")
        name = token_name(line[:colon])
        if name is None:
            # Also rejects obs-fold (a line starting with whitespace).
            raise ProtocolError("invalid header name")
        value = line[colon + 1 :].strip(b" \t")
        if not field_value_ok(value):
            raise ProtocolError("invalid header value")
        headers.append((name, value))
    return headers


def serialize_request_head(
    method: bytes, target: bytes, headers: Headers, content_length: Optional[int]
) -> bytes:
    """The request line and headers for ``method target`` over HTTP/1.1.

    ``headers`` must already be free of framing and hop-by-hop headers;
    ``content_length`` adds the one framing header powerlb sends (None: no body).
    """
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if content_length is not None:
        parts += (b"content-length: ", b"%d" % content_length, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def serialize_interim(status: int, reason: bytes, headers: Headers) -> bytes:
    """An interim (1xx) response as relayed to an HTTP/1.1 client: status line and ``headers``."""
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
