"""Writing responses: upstream headers, cached entries, and powerlb's own answers.

The one place that builds powerlb's own responses (errors, refusals, ``PURGE`` outcomes, the channel's
rejections) and holds the status-phrase table (:func:`reason_phrase`)."""

from __future__ import annotations

from functools import lru_cache
from http import HTTPStatus
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.web.http import datetimeToString
from twisted.web.http_headers import Headers as TwistedHeaders
from twisted.web.server import Request

from powerlb import cachepolicy
from powerlb.headers import HOP_BY_HOP, USUAL_CONNECTION_OPTIONS, VIA, Headers, SharedHeaders

if TYPE_CHECKING:
    from powerlb.server import ProxyRequest


def set_response_headers(request: ProxyRequest, headers: Headers, x_cache: bytes) -> None:
    """Replace the twisted.web response headers with ``headers`` plus ``X-Cache``.

    twisted.web's own ``Server`` header is dropped; its ``Date`` is kept only
    when the response has none. ``x_cache`` is also noted on the request (for
    :mod:`powerlb.outcomes`).
    """
    request.x_cache = x_cache
    out = request.responseHeaders
    date = out.getRawHeaders(b"date")
    out.removeHeader(b"server")
    out.removeHeader(b"date")
    grouped: Dict[bytes, List[bytes]] = {}
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    if b"date" not in grouped and date:
        grouped[b"date"] = list(date)
    grouped[b"x-cache"] = [x_cache]
    for name, values in grouped.items():
        out.setRawHeaders(name, values)


def wire_head(answer: cachepolicy.Answer, x_cache: bytes) -> Tuple[bytes, bool]:
    """The head of ``answer`` as an HTTP/1.1 response, what the client's sink writes for a hit otherwise;
    and whether it is dated by the answer itself (then it stays the same while the ``Age`` does).

    For the client channel's short way for cache hits. A ``Date`` is added
    only when the stored response has none, and names are written in
    twisted.web's case (:data:`wire_name`), as twisted.web does. The body is
    never joined to the head, so that a large body is never copied (on PyPy
    that copy halved the throughput of 32 KiB hits).
    """
    parts = [b"HTTP/1.1 %d %s\r\n" % (answer.status, answer.reason or reason_phrase(answer.status))]
    dated = False
    for name, value in answer.headers:
        dated = dated or name == b"date"
        parts += (wire_name(name), b": ", value, b"\r\n")
    if not dated:
        parts += (b"Date: ", datetimeToString(), b"\r\n")
    parts += (_VIA_LINE, b"X-Cache: ", x_cache, b"\r\n\r\n")
    return b"".join(parts), dated


def header_lines(parts: List[bytes], headers: Headers) -> Tuple[bool, bool]:
    """Add ``headers`` (as the client gets them) to ``parts`` as header lines, names in twisted.web's
    case (:data:`wire_name`), any ``X-Cache`` left out (powerlb writes its own): whether they have a
    ``Date``, and whether they have a ``Content-Length``."""
    dated = framed = False
    for name, value in headers:
        if name in _NOTED:
            if name == b"x-cache":
                continue
            if name == b"date":
                dated = True
            else:
                framed = True
        parts += (wire_name(name), b": ", value, b"\r\n")
    return dated, framed


def forwarded_header_lines(parts: List[bytes], headers: Headers) -> Optional[Tuple[bool, bool]]:
    """Add a backend response's ``headers`` to ``parts`` as :func:`header_lines` adds
    ``forward_response_headers(headers)``, in one pass (hop-by-hop fields dropped, ``Via`` last): whether
    they have a ``Date``, and whether they have a ``Content-Length``.

    None, with ``parts`` as it was, for the headers that need
    :func:`~powerlb.headers.forward_response_headers` itself: a ``Connection``
    other than ``keep-alive``, ``close`` or ``upgrade`` (it may name other
    fields), ``Transfer-Encoding``, a ``Content-Length`` repeated or not a
    plain number, a backend's ``Via``, a field named ``close``.

    :class:`~powerlb.headers.SharedHeaders` keep the lines made of them (their ``forwarded`` view):
    every response with the same header block gets them at once.
    """
    if type(headers) is not SharedHeaders:
        return _forwarded_lines(parts, headers)
    view = headers.forwarded
    if view is None:
        lines: List[bytes] = []
        found = _forwarded_lines(lines, headers)
        view = headers.forwarded = _DECLINED if found is None else (b"".join(lines), *found)
    if view is _DECLINED:
        return None
    parts.append(view[0])
    return view[1], view[2]


def _forwarded_lines(parts: List[bytes], headers: Headers) -> Optional[Tuple[bool, bool]]:
    """:func:`forwarded_header_lines`, worked out."""
    start = len(parts)
    dated = framed = False
    for name, value in headers:
        if name in _FORWARD_NOTED:
            if name == b"date":
                dated = True
            elif name == b"content-length":
                if framed or not value.isdigit():
                    break
                framed = True
            elif name == b"connection":
                if value not in USUAL_CONNECTION_OPTIONS:
                    break
                continue
            elif name in _DROPPED_HOP_BY_HOP or name == b"x-cache":
                continue
            else:  # Transfer-Encoding, Via, close
                break
        parts += (wire_name(name), b": ", value, b"\r\n")
    else:
        parts.append(_VIA_LINE)
        return dated, framed
    del parts[start:]
    return None


#: A :class:`~powerlb.headers.SharedHeaders`' ``forwarded`` view when :func:`forwarded_header_lines`
#: declines them.
_DECLINED = ()
#: The names :func:`header_lines` looks at before it writes a field.
_NOTED = frozenset({b"x-cache", b"date", b"content-length"})
#: Hop-by-hop fields :func:`forwarded_header_lines` drops as they come (Transfer-Encoding and
#: Connection need more).
_DROPPED_HOP_BY_HOP = HOP_BY_HOP - {b"transfer-encoding", b"connection"}
#: The names :func:`forwarded_header_lines` looks at before it writes a field.
_FORWARD_NOTED = HOP_BY_HOP | _NOTED | {b"via", b"close"}
_VIA_LINE = b"Via: " + VIA + b"\r\n"


@lru_cache(maxsize=4)
def http_date(second: int) -> bytes:
    """The HTTP-date (IMF-fixdate) of the Unix time ``second``, formatted once per second."""
    date: bytes = datetimeToString(second)
    return date


#: Most header names :data:`wire_name` remembers (names are few; a flood of odd ones is not kept).
MAX_WIRE_NAMES = 10_000


class _WireNames(Dict[bytes, bytes]):
    """Lower-cased header names, each as twisted.web writes it; a name is worked out when first asked."""

    def __missing__(self, name: bytes) -> bytes:
        headers = TwistedHeaders()
        headers.setRawHeaders(name, [b""])
        ((written, _),) = headers.getAllRawHeaders()
        if len(self) < MAX_WIRE_NAMES:
            self[name] = written
        return written


#: ``wire_name(name)``: the lower-cased header ``name`` as twisted.web writes it on every other
#: response (``Content-Type``, ``ETag``), so that a hit the short way carries the names a miss
#: does. A dict's own lookup: no Python call per header once a name is known.
wire_name: Callable[[bytes], bytes] = _WireNames().__getitem__


def error_response(
    request: Request, status: int, reason: str, headers: Sequence[Tuple[bytes, bytes]] = ()
) -> bytes:
    """Set a short plain-text status on ``request`` (plus ``headers``, e.g. ``Location``,
    ``Retry-After``); returns the body to send.

    Used for powerlb's own answers: errors, refusals, and the outcome of a ``PURGE``.
    """
    request.setResponseCode(status)
    request.setHeader(b"date", datetimeToString())  # a plain request (ProxyRequest.serve_plain) has none yet
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    request.setHeader(b"server", b"powerlb")
    request.setHeader(b"cache-control", b"no-store")
    for name, value in headers:
        request.setHeader(name, value)
    body = plain_body(status, reason)
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


#: Reason phrases where RFC 9110 renamed what the standard library still calls otherwise.
_RFC9110_PHRASES = {413: b"Content Too Large", 414: b"URI Too Long", 416: b"Range Not Satisfiable"}
#: The one status-phrase table: every status the standard library knows, with RFC 9110's names.
_PHRASES: Dict[int, bytes] = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
_PHRASES.update(_RFC9110_PHRASES)


def reason_phrase(status: int) -> bytes:
    """The reason phrase of ``status`` (RFC 9110's), ``Error`` for a status without one."""
    return _PHRASES.get(status, b"Error")


def plain_body(status: int, reason: str) -> bytes:
    """The one-line plain-text body of powerlb's own answer ``status`` with ``reason`` (none when empty)."""
    if not reason:
        return b"%d %s\n" % (status, reason_phrase(status))
    return b"%d %s: %s\n" % (status, reason_phrase(status), reason.encode())


def plain_response(status: int, reason: str) -> bytes:
    """A complete ``Connection: close`` HTTP/1.1 response of powerlb's own with a one-line plain-text
    body: what the client channel writes when it rejects a request before twisted.web has one."""
    body = plain_body(status, reason)
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\nserver: powerlb\r\n\r\n%s" % (status, reason_phrase(status), len(body), body)
    )
