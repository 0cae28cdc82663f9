"""The admin listener: the dashboard at ``/``, the runtime API under ``/api/v1/`` (see
:mod:`powerlb.api`) and ``/metrics`` (Prometheus text), and the sampler keeping the
dashboard's charts (:class:`SeriesSampler`)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from twisted.application.internet import TimerService
from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import Resource

from powerlb.api import ApiResource
from powerlb.caching import CacheLayer
from powerlb.control import BackendControl, Control
from powerlb.dashboard import DashboardResource
from powerlb.metrics import MetricsResource
from powerlb.settings import Config
from powerlb.timeseries import SeriesKeeper


class SeriesSampler(TimerService):
    """Feeds ``stats()`` to a :class:`~powerlb.timeseries.SeriesKeeper` every ``keeper.step``
    seconds of ``clock`` while the service runs (the first time when it starts)."""

    def __init__(
        self, stats: Callable[[], Dict[str, Any]], clock: IReactorTime, keeper: Optional[SeriesKeeper] = None
    ) -> None:
        self.keeper = keeper or SeriesKeeper()
        super().__init__(self.keeper.step, self.sample)
        self.clock = self._clock = clock  # TimerService runs its loop on ``clock``
        self._stats = stats

    def sample(self) -> None:
        """Take one snapshot now."""
        self.keeper.add(self._clock.seconds(), self._stats())


def admin_root(
    stats: Callable[[], Dict[str, Any]],
    config: Callable[[], Config],
    control: Optional[BackendControl] = None,
    cache: Optional[CacheLayer] = None,
    token: Optional[str] = None,
    changes: Optional[Control] = None,
    series: Optional[SeriesKeeper] = None,
) -> Resource:
    """The admin resource tree.

    ``stats`` and ``config`` give the live figures and the effective
    configuration; ``control`` (the service) and ``cache``, or ``changes``
    (the ``--workers`` relay), and ``token`` serve the API's changes (see
    :class:`ApiResource`); ``series`` (a :class:`SeriesSampler`'s keeper)
    serves ``GET /api/v1/series``.
    """
    root = Resource()
    root.putChild(b"", DashboardResource())
    root.putChild(b"metrics", MetricsResource(stats))
    series_json = None if series is None else series.series
    root.putChild(b"api", ApiResource(stats, config, control, cache, token, changes, series_json))
    return root
