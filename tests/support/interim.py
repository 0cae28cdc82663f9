"""A backend that sends interim (1xx) responses, and what a client should get of them."""

from __future__ import annotations

from typing import Any, Callable

INTERIM = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 102 Processing\r\n\r\n"
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nLink: </b.js>; rel=preload\r\n"
    b"Connection: x-hop\r\nX-Hop: 1\r\n\r\n"
)
#: What the client gets of them: hop-by-hop fields dropped.
RELAYED = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 102 Processing\r\n\r\n"
    b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\nlink: </b.js>; rel=preload\r\n\r\n"
)


def hinting(cache_control: bytes) -> Callable[[Any], bytes]:
    """A backend route that sends the interim responses, then a 200 with ``cache_control``."""

    def route(request: Any) -> bytes:
        request.channel.transport.write(INTERIM)
        request.setHeader(b"cache-control", cache_control)
        return b"final body"

    return route


def request(method: bytes, path: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    return b"%s %s %s\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n" % (method, path, version)
