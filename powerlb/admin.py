"""The admin listener: the dashboard at ``/``, the runtime API under ``/api/v1/`` (see
:mod:`powerlb.api`) and ``/metrics`` (Prometheus text)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.web.resource import Resource

from powerlb.api import ApiResource
from powerlb.caching import CacheLayer
from powerlb.control import BackendControl, Control
from powerlb.dashboard import DashboardResource
from powerlb.metrics import MetricsResource
from powerlb.settings import Config


def admin_root(
    stats: Callable[[], Dict[str, Any]],
    config: Callable[[], Config],
    control: Optional[BackendControl] = None,
    cache: Optional[CacheLayer] = None,
    token: Optional[str] = None,
    changes: Optional[Control] = None,
) -> Resource:
    """The admin resource tree.

    ``stats`` and ``config`` give the live figures and the effective
    configuration; ``control`` (the service) and ``cache``, or ``changes``
    (the ``--workers`` relay), and ``token`` serve the API's changes (see
    :class:`ApiResource`).
    """
    root = Resource()
    root.putChild(b"", DashboardResource())
    root.putChild(b"metrics", MetricsResource(stats))
    root.putChild(b"api", ApiResource(stats, config, control, cache, token, changes))
    return root
