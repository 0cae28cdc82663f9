"""The admin listener: ``/_powerlb/stats`` (JSON) and ``/_powerlb/metrics`` (Prometheus text)."""

from __future__ import annotations

import json
from typing import Any, Callable, Dict

from twisted.web.resource import Resource
from twisted.web.server import Request

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


def admin_root(stats: Callable[[], Dict[str, Any]]) -> Resource:
    """The admin resource tree."""
    root = Resource()
    namespace = Resource()
    root.putChild(b"_powerlb", namespace)
    namespace.putChild(b"stats", StatsResource(stats))
    namespace.putChild(b"metrics", MetricsResource(stats))
    return root
