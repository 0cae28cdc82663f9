"""The admin listener: ``/_powerlb/stats`` (JSON), ``/_powerlb/metrics`` (Prometheus text)
and ``POST /_powerlb/purge`` (remove cached responses, bearer token required)."""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable, Dict, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request

from powerlb.cachepolicy import url_key
from powerlb.caching import CacheLayer
from powerlb.stats import prometheus_families


class _Families:
    """A prometheus_client collector over one instance's snapshot (no global registry)."""

    def __init__(self, stats: Callable[[], Dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Any:
        return prometheus_families(self._stats())


class StatsResource(Resource):
    """``GET /_powerlb/stats``: backends, counters and cache figures as JSON."""

    isLeaf = True

    def __init__(self, stats: Callable[[], Dict[str, Any]]) -> None:
        super().__init__()
        self._stats = stats

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._stats(), indent=2).encode() + b"\n"


class MetricsResource(Resource):
    """``GET /_powerlb/metrics``: the same figures in the Prometheus text format."""

    isLeaf = True

    def __init__(self, stats: Callable[[], Dict[str, Any]]) -> None:
        super().__init__()
        from prometheus_client import CollectorRegistry

        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Families(stats))

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


class PurgeResource(Resource):
    """``POST /_powerlb/purge?url=URL`` or ``?prefix=URL``: remove cached responses.

    ``url`` removes every stored variant of one absolute URL (as clients
    request it: ``http://host[:port]/path?query``); ``prefix`` removes every
    URL that starts with it. Answers ``{"purged": N}``. Requires
    ``Authorization: Bearer <admin-token>``: without a configured token the
    endpoint is off (403); a missing or wrong token gets 401.
    """

    isLeaf = True

    def __init__(self, cache: Optional[CacheLayer], token: Optional[str]) -> None:
        super().__init__()
        self._cache = cache
        self._token = None if token is None else token.encode()

    def render_POST(self, request: Request) -> bytes:
        if self._token is None:
            return _json(request, 403, {"error": "purge is disabled: set admin-token to enable purge"})
        given = request.getHeader(b"authorization") or b""
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self._token):
            request.setHeader(b"www-authenticate", b'Bearer realm="powerlb"')
            return _json(request, 401, {"error": "a valid Authorization: Bearer <admin-token> is required"})
        if self._cache is None:
            return _json(request, 404, {"error": "the cache is off (cache-size 0)"})
        args = request.args
        if len([name for name in (b"url", b"prefix") if name in args]) != 1:
            return _json(request, 400, {"error": "give exactly one of ?url=URL or ?prefix=URL"})
        prefix = b"prefix" in args
        key = url_key(args[b"prefix" if prefix else b"url"][0])
        if key is None:
            return _json(request, 400, {"error": "the URL must be absolute: http://host/path"})
        return _json(request, 200, {"purged": self._cache.purge(key, prefix=prefix)})


def _json(request: Request, status: int, body: Dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode() + b"\n"


def admin_root(
    stats: Callable[[], Dict[str, Any]], cache: Optional[CacheLayer] = None, token: Optional[str] = None
) -> Resource:
    """The admin resource tree; ``cache`` and ``token`` serve the purge endpoint."""
    root = Resource()
    namespace = Resource()
    root.putChild(b"_powerlb", namespace)
    namespace.putChild(b"stats", StatsResource(stats))
    namespace.putChild(b"metrics", MetricsResource(stats))
    namespace.putChild(b"purge", PurgeResource(cache, token))
    return root
