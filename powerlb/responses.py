"""Writing responses to twisted.web requests: upstream headers, cached entries, powerlb's own errors."""

from __future__ import annotations

from http import HTTPStatus
from typing import Dict, List

from twisted.web.server import Request

from powerlb import cachepolicy
from powerlb.cache import CachedResponse
from powerlb.headers import Headers


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
