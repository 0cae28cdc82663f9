"""Sticky sessions by cookie: the cookie that names a client's backend (pure).

With ``sticky-cookie: NAME`` a client response gets ``Set-Cookie: NAME=<id>``
where ``<id>`` is :func:`backend_id` of the backend that answered; later
requests carrying it go back to that backend while it can take them (see
:class:`~powerlb.balancing.StickySessions`). The cookie is powerlb's own: it
is removed from requests before they go upstream, and it is added to client
responses only, never to a stored response.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Optional

from powerlb.headers import Headers, get_cookie, strip_cookie


@functools.lru_cache(maxsize=1024)
def backend_id(url: str) -> bytes:
    """A short id for the backend at ``url``: 12 hex digits of its BLAKE2b hash.

    Stable across restarts and workers, and it does not show the backend's address.
    """
    return hashlib.blake2b(url.encode(), digest_size=6).hexdigest().encode("ascii")


class StickyCookie:
    """The sticky-session cookie ``name``: what a request asks for, and what to set on a response."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name.encode("ascii")

    def wanted(self, headers: Headers) -> Optional[bytes]:
        """The backend id a request's cookie names, or None."""
        return get_cookie(headers, self.name)

    def strip(self, headers: Headers) -> Headers:
        """Request ``headers`` without the sticky cookie, to send upstream."""
        return strip_cookie(headers, self.name)

    def set_cookie(self, request_headers: Headers, backend_url: str, secure: bool) -> Optional[bytes]:
        """The ``Set-Cookie`` value sending the client to ``backend_url``; None if its cookie already does.

        ``secure`` (the client came over TLS) adds the ``Secure`` attribute.
        """
        wanted = backend_id(backend_url)
        if get_cookie(request_headers, self.name) == wanted:
            return None
        attributes = b"; Path=/; HttpOnly; SameSite=Lax"
        return self.name + b"=" + wanted + (attributes + b"; Secure" if secure else attributes)
