"""Live figures of one powerlb instance: request counters and the snapshot the admin listener shows."""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Sequence

from powerlb.backend import Backend
from powerlb.cache import ICacheStore


class Counters:
    """Request outcome counters, mutated from the reactor thread only.

    Each request to the cache counts once in one of ``cache_hits``,
    ``cache_misses``, ``cache_stale``, ``cache_revalidated``,
    ``cache_coalesced``, ``cache_bypass`` (its ``X-Cache``);
    ``cache_purged`` and ``cache_invalidated`` count stored responses removed
    by purges and by unsafe requests.
    """

    __slots__ = (
        "cache_bypass",
        "cache_coalesced",
        "cache_hits",
        "cache_invalidated",
        "cache_misses",
        "cache_purged",
        "cache_revalidated",
        "cache_stale",
        "cache_stores",
        "errors",
        "requests",
        "upstream_errors",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


#: The per-request cache results (``X-Cache`` values) in the snapshot and the metrics.
CACHE_RESULTS = ("hits", "misses", "stale", "revalidated", "coalesced", "bypass")


def snapshot(
    backends: Sequence[Backend],
    counters: Counters,
    cache: Optional[ICacheStore],
    last_check: Callable[[Backend], Optional[str]],
    connections: Callable[[Backend], Dict[str, int]],
) -> Dict[str, Any]:
    """Everything ``GET /api/v1/stats`` returns, as plain JSON-ready data."""
    from_cache = (
        counters.cache_hits + counters.cache_stale + counters.cache_revalidated + counters.cache_coalesced
    )
    lookups = from_cache + counters.cache_misses
    cache_figures: Dict[str, Any] = {
        "enabled": cache is not None,
        **{result: getattr(counters, f"cache_{result}") for result in CACHE_RESULTS},
        "purged": counters.cache_purged,
        "invalidated": counters.cache_invalidated,
        "hit_ratio": round(from_cache / lookups, 4) if lookups else 0.0,
    }
    if cache is not None:
        cache_figures.update(cache.stats())
    return {
        "requests": counters.requests,
        "errors": counters.errors,
        "upstream_errors": counters.upstream_errors,
        "backends": [{**b.snapshot(), "last_check": last_check(b), **connections(b)} for b in backends],
        "cache": cache_figures,
    }


def prometheus_families(stats: Dict[str, Any]) -> Iterable[Any]:
    """The snapshot as Prometheus metric families (for prometheus_client's ``collect``)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    yield CounterMetricFamily("powerlb_requests", "Client requests received", value=stats["requests"])
    yield CounterMetricFamily("powerlb_errors", "Error responses made by powerlb", value=stats["errors"])
    per_backend = {
        "healthy": GaugeMetricFamily(
            "powerlb_backend_healthy", "1 when the backend takes traffic", labels=["backend"]
        ),
        "in_flight": GaugeMetricFamily("powerlb_backend_in_flight", "Requests in flight", labels=["backend"]),
        "requests": CounterMetricFamily("powerlb_backend_requests", "Requests sent", labels=["backend"]),
        "failures": CounterMetricFamily("powerlb_backend_failures", "Failed exchanges", labels=["backend"]),
    }
    for backend in stats["backends"]:
        for field, family in per_backend.items():
            family.add_metric([backend["url"]], float(backend[field]))
    yield from per_backend.values()
    cache = stats["cache"]
    results = CounterMetricFamily("powerlb_cache_results", "Cache lookups by result", labels=["result"])
    for result in CACHE_RESULTS:
        results.add_metric([result], cache[result])
    yield results
    removed = CounterMetricFamily("powerlb_cache_removed", "Stored responses removed", labels=["by"])
    for by in ("purged", "invalidated"):
        removed.add_metric([by], cache[by])
    yield removed
    for field in ("bytes", "entries", "evictions", "stores"):
        if field in cache:
            yield GaugeMetricFamily(f"powerlb_cache_{field}", f"Cache {field}", value=cache[field])
