"""The admin listener's ``GET /``: a self-contained HTML dashboard that polls ``api/v1/stats``.

The page (``powerlb/dashboard.html``, package data) carries its CSS and JS
inline and loads nothing else; it is served with a Content-Security-Policy
that allows exactly its inline blocks, by their SHA-256 hashes, and requests
to this origin only.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path
from typing import List, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request

#: The page, next to this module (``setup.py`` ships it as package data).
PAGE_PATH = Path(__file__).with_name("dashboard.html")

_INLINE = {tag: re.compile(f"<{tag}>(.*?)</{tag}>", re.DOTALL) for tag in ("script", "style")}


def inline_hashes(html: str, tag: str) -> List[str]:
    """The CSP source expressions (``'sha256-...'``) of every attribute-less inline ``<tag>`` block."""
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(block.encode("utf-8")).digest()).decode() + "'"
        for block in _INLINE[tag].findall(html)
    ]


def content_security_policy(html: str) -> str:
    """A policy letting ``html`` run its own inline script and style blocks and fetch from its origin only."""
    scripts = " ".join(inline_hashes(html, "script")) or "'none'"
    styles = " ".join(inline_hashes(html, "style")) or "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src {styles}; connect-src 'self'; "
        "img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )


class DashboardResource(Resource):
    """``GET /`` (and ``HEAD``): the dashboard page, read once when the resource is made."""

    def __init__(self, page: Optional[Path] = None) -> None:
        super().__init__()
        html = (page or PAGE_PATH).read_text(encoding="utf-8")
        self._body = html.encode("utf-8")
        self._headers = (
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-security-policy", content_security_policy(html).encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"cache-control", b"no-store"),
            (b"referrer-policy", b"no-referrer"),
        )

    def render_GET(self, request: Request) -> bytes:
        for name, value in self._headers:
            request.setHeader(name, value)
        return self._body

    def render_HEAD(self, request: Request) -> bytes:
        self.render_GET(request)
        request.setHeader(b"content-length", b"%d" % len(self._body))
        return b""
