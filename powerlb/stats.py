"""Live figures of one powerlb instance: request counters, the snapshot the admin listener shows,
and that snapshot as Prometheus metric families.

The snapshot is plain JSON data and the only source of the metrics: with
``--workers N`` the main process merges the workers' snapshots
(:func:`powerlb.workers.merge_snapshots`) and serves the metrics from the merge.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from powerlb.backend import TIMEOUT_KINDS, Backend
from powerlb.cache import ICacheStore
from powerlb.latency import cumulative_buckets


class Counters:
    """Request outcome counters, mutated from the reactor thread only.

    Each request to the cache counts once in one of ``cache_hits``,
    ``cache_misses``, ``cache_stale``, ``cache_revalidated``,
    ``cache_coalesced``, ``cache_bypass`` (its ``X-Cache``);
    ``cache_purged`` and ``cache_invalidated`` count stored responses removed
    by purges and by unsafe requests; ``retries`` the requests sent again to
    another backend.
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
        "retries",
        "upstream_errors",
    )

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)


#: The per-request cache results (``X-Cache`` values) in the snapshot and the metrics.
CACHE_RESULTS = ("hits", "misses", "stale", "revalidated", "coalesced", "bypass")


def hit_ratio(results: Mapping[str, int]) -> float:
    """The share of cache look-ups answered from the cache (hits, stale, revalidated, coalesced)
    among those and the misses, from the snapshot's ``cache`` figures; 0.0 before any."""
    from_cache = sum(results.get(result, 0) for result in ("hits", "stale", "revalidated", "coalesced"))
    lookups = from_cache + results.get("misses", 0)
    return round(from_cache / lookups, 4) if lookups else 0.0


def snapshot(
    backends: Sequence[Backend],
    counters: Counters,
    cache: Optional[ICacheStore],
    last_check: Callable[[Backend], Optional[str]],
    connections: Callable[[Backend], Dict[str, int]],
    responses: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Everything ``GET /api/v1/stats`` returns, as plain JSON-ready data.

    ``responses`` is :meth:`powerlb.outcomes.Outcomes.snapshot`: completed requests by
    backend, status class and cache result.
    """
    cache_figures: Dict[str, Any] = {
        "enabled": cache is not None,
        **{result: getattr(counters, f"cache_{result}") for result in CACHE_RESULTS},
        "purged": counters.cache_purged,
        "invalidated": counters.cache_invalidated,
    }
    cache_figures["hit_ratio"] = hit_ratio(cache_figures)
    if cache is not None:
        cache_figures.update(cache.stats())
    return {
        "requests": counters.requests,
        "errors": counters.errors,
        "upstream_errors": counters.upstream_errors,
        "retries": counters.retries,
        "responses": dict(responses or {}),
        "backends": [{**b.snapshot(), "last_check": last_check(b), **connections(b)} for b in backends],
        "cache": cache_figures,
    }


def prometheus_families(stats: Dict[str, Any]) -> Iterable[Any]:
    """The snapshot (of one process, or merged) as Prometheus metric families, for a collector.

    Counters keep their ``_total`` suffix, times are in seconds; every family
    is made here, per scrape, from plain data (no prometheus_client metric
    object lives on the request path).
    """
    requests = CounterMetricFamily(
        "powerlb_requests",
        'Client requests answered, by backend (last one tried, "" for none), status class and cache result',
        labels=["backend", "code", "cache"],
    )
    for backend, by_code in sorted(stats.get("responses", {}).items()):
        for code, by_cache in sorted(by_code.items()):
            for cache, count in sorted(by_cache.items()):
                requests.add_metric([backend, code, cache], count)
    yield requests
    yield CounterMetricFamily("powerlb_errors", "Error responses made by powerlb", value=stats["errors"])
    yield CounterMetricFamily(
        "powerlb_retries", "Requests sent again to another backend", value=stats.get("retries", 0)
    )
    yield from _backend_families(stats["backends"])
    yield from _cache_families(stats["cache"])


def _backend_families(backends: Sequence[Dict[str, Any]]) -> Iterable[Any]:
    label = ["backend"]
    gauges = {
        "in_flight": GaugeMetricFamily("powerlb_backend_in_flight", "Requests in flight", labels=label),
        "open_connections": GaugeMetricFamily(
            "powerlb_backend_open_connections", "Open connections to the backend", labels=label
        ),
        "queued": GaugeMetricFamily(
            "powerlb_backend_queued", "Requests waiting for a connection to the backend", labels=label
        ),
    }
    counters = {
        "requests": CounterMetricFamily("powerlb_backend_requests", "Requests sent", labels=label),
        "failures": CounterMetricFamily("powerlb_backend_failures", "Failed exchanges", labels=label),
        "ejections": CounterMetricFamily(
            "powerlb_backend_ejections", "Times taken out by outlier detection", labels=label
        ),
        "queue_waits": CounterMetricFamily(
            "powerlb_queue_waits", "Requests that waited for a free connection slot", labels=label
        ),
        "queue_timeouts": CounterMetricFamily(
            "powerlb_queue_timeouts", "Requests that waited too long for a connection slot", labels=label
        ),
    }
    up = GaugeMetricFamily(
        "powerlb_backend_up",
        "1 while health checks pass and it is neither ejected as an outlier nor disabled",
        labels=label,
    )
    checks = CounterMetricFamily(
        "powerlb_health_checks", "Health-check results", labels=["backend", "result"]
    )
    timeouts = CounterMetricFamily(
        "powerlb_upstream_timeouts", "Upstream time limits that ran out, by kind", labels=["backend", "kind"]
    )
    latency = HistogramMetricFamily(
        "powerlb_upstream_response_seconds",
        "Seconds from a request sent to a backend to its response head",
        labels=label,
    )
    for backend in backends:
        url = [backend["url"]]
        up.add_metric(
            url, float(backend["healthy"] and not backend.get("ejected") and not backend.get("disabled"))
        )
        for field, family in (*gauges.items(), *counters.items()):
            if field in backend:
                family.add_metric(url, backend[field])
        for result, count in backend.get("checks", {}).items():
            checks.add_metric([backend["url"], result], count)
        for kind in TIMEOUT_KINDS:
            timeouts.add_metric([backend["url"], kind], backend.get("timeouts", {}).get(kind, 0))
        if "latency_buckets" in backend:
            latency.add_metric(
                url, cumulative_buckets(backend["latency_buckets"]), sum_value=backend["latency_sum"]
            )
    yield up
    yield from gauges.values()
    yield from counters.values()
    yield checks
    yield timeouts
    yield latency


def _cache_families(cache: Dict[str, Any]) -> Iterable[Any]:
    results = CounterMetricFamily("powerlb_cache_results", "Cache lookups by result", labels=["result"])
    for result in CACHE_RESULTS:
        results.add_metric([result], cache[result])
    yield results
    removed = CounterMetricFamily("powerlb_cache_removed", "Stored responses removed", labels=["by"])
    for by in ("purged", "invalidated"):
        removed.add_metric([by], cache[by])
    yield removed
    for field, help_text in (("bytes", "Bytes stored"), ("entries", "Responses stored")):
        if field in cache:
            yield GaugeMetricFamily(f"powerlb_cache_{field}", help_text, value=cache[field])
    for field, help_text in (
        ("evictions", "Stored responses evicted to make room"),
        ("stores", "Responses stored"),
        ("expired", "Stored responses dropped after their time ran out"),
    ):
        if field in cache:
            yield CounterMetricFamily(f"powerlb_cache_{field}", help_text, value=cache[field])
