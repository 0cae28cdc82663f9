"""The admin listener: the dashboard at ``/``, the runtime API under ``/api/v1/`` (see
:mod:`powerlb.api`) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.web.resource import Resource
from twisted.web.server import Request

from powerlb.api import ApiResource, BackendControl
from powerlb.caching import CacheLayer
from powerlb.config import Config
from powerlb.dashboard import DashboardResource
from powerlb.stats import prometheus_families


class _Families:
    """A prometheus_client collector over one instance's snapshot (no global registry)."""

    def __init__(self, stats: Callable[[], Dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Any:
        return prometheus_families(self._stats())


class MetricsResource(Resource):
    """``GET /metrics``: the same figures in the Prometheus text format.

    Each resource has its own registry (two instances in one process never
    mix), and renders on the reactor thread, where the figures live.
    """

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


def admin_root(
    stats: Callable[[], Dict[str, Any]],
    config: Callable[[], Config],
    control: Optional[BackendControl] = None,
    cache: Optional[CacheLayer] = None,
    token: Optional[str] = None,
) -> Resource:
    """The admin resource tree.

    ``stats`` and ``config`` give the live figures and the effective
    configuration; ``control`` (the service, None with ``--workers``),
    ``cache`` and ``token`` serve the API's changes (see :class:`ApiResource`).
    """
    root = Resource()
    root.putChild(b"", DashboardResource())
    root.putChild(b"metrics", MetricsResource(stats))
    root.putChild(b"api", ApiResource(stats, config, control, cache, token))
    return root
