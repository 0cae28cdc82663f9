"""``/metrics`` on the admin listener: the stats snapshot as Prometheus metric families.

The snapshot (:func:`powerlb.stats.snapshot`, or the workers' merge) is the
only source: every family is made per scrape from plain data, and no
prometheus_client object lives on the request path. This is the only module
that imports prometheus_client, and only :mod:`powerlb.admin` imports it, so
an instance without an admin listener never loads it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Sequence, Tuple, Union

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString
from twisted.web.resource import Resource
from twisted.web.server import Request

from powerlb.backend import TIMEOUT_KINDS
from powerlb.latency import LATENCY_BUCKETS
from powerlb.stats import CACHE_RESULTS


class _Families:
    """A prometheus_client collector over one instance's snapshot (no global registry)."""

    def __init__(self, stats: Callable[[], Dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Iterable[Metric]:
        return prometheus_families(self._stats())


class MetricsResource(Resource):
    """``GET /metrics``: the same figures in the Prometheus text format.

    Each resource has its own registry (two instances in one process never
    mix), and renders on the reactor thread, where the figures live.
    """

    isLeaf = True

    def __init__(self, stats: Callable[[], Dict[str, Any]]) -> None:
        super().__init__()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Families(stats))

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


def prometheus_families(stats: Dict[str, Any]) -> Iterable[Metric]:
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
    yield CounterMetricFamily(
        "powerlb_outlier_ejections_refused",
        "Outlier ejections not made: the pool's last eligible backend, or outlier-max-ejection reached",
        value=stats.get("ejections_refused", 0),
    )
    yield from _backend_families(stats["backends"])
    yield from _route_families(stats.get("routes", []))
    yield from _cache_families(stats["cache"])
    yield from _redis_families(stats.get("redis", {}))
    yield from _tunnel_families(stats.get("tunnels", {}))


def _backend_families(backends: Sequence[Dict[str, Any]]) -> Iterable[Metric]:
    label = ["pool", "backend"]
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
        "powerlb_health_checks", "Health-check results", labels=["pool", "backend", "result"]
    )
    timeouts = CounterMetricFamily(
        "powerlb_upstream_timeouts",
        "Upstream time limits that ran out, by kind",
        labels=["pool", "backend", "kind"],
    )
    latency = HistogramMetricFamily(
        "powerlb_upstream_response_seconds",
        "Seconds from a request sent to a backend to its response head",
        labels=label,
    )
    families: List[Tuple[str, Union[GaugeMetricFamily, CounterMetricFamily]]] = [
        *gauges.items(),
        *counters.items(),
    ]
    for backend in backends:
        url = [backend.get("pool", "default"), backend["url"]]
        up.add_metric(
            url, float(backend["healthy"] and not backend.get("ejected") and not backend.get("disabled"))
        )
        for field, family in families:
            if field in backend:
                family.add_metric(url, backend[field])
        for result, count in backend.get("checks", {}).items():
            checks.add_metric([*url, result], count)
        for kind in TIMEOUT_KINDS:
            timeouts.add_metric([*url, kind], backend.get("timeouts", {}).get(kind, 0))
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


def _route_families(routes: Sequence[Dict[str, Any]]) -> Iterable[Metric]:
    """Requests per route, and the routes' refusals by policy (``none``: no route matched)."""
    requests = CounterMetricFamily(
        "powerlb_route_requests", "Client requests matched to the route", labels=["route", "pool"]
    )
    refusals = CounterMetricFamily(
        "powerlb_policy_refusals",
        "Requests a route's policy answered itself (acl, redirect, rate-limit; no-route)",
        labels=["route", "policy"],
    )
    for route in routes:
        requests.add_metric([route["route"], route.get("pool") or ""], route.get("requests", 0))
        for policy, count in sorted(route.get("refusals", {}).items()):
            refusals.add_metric([route["route"], policy], count)
    yield requests
    yield refusals


def _cache_families(cache: Dict[str, Any]) -> Iterable[Metric]:
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


#: The Redis tier's counters (see :meth:`powerlb.redistier.RedisStore.stats`) and their help.
REDIS_COUNTERS = (
    ("hits", "Local misses the Redis tier answered"),
    ("misses", "Local misses the Redis tier did not answer (timeouts and errors included)"),
    ("timeouts", "Redis commands that took longer than redis-timeout"),
    ("errors", "Redis commands that failed, and bad entries read"),
    ("reconnects", "Times the connection to Redis came back"),
    ("stores", "Responses written through to Redis"),
    ("dropped", "Stores dropped because Redis was slow or down"),
    ("received", "Changes received from other instances on the bus"),
)


def _redis_families(redis: Dict[str, Any]) -> Iterable[Metric]:
    if not redis.get("enabled"):
        return
    yield GaugeMetricFamily("powerlb_redis_up", "1 while connected to Redis", value=float(redis["up"]))
    for field, help_text in REDIS_COUNTERS:
        yield CounterMetricFamily(f"powerlb_redis_{field}", help_text, value=redis.get(field, 0))


def _tunnel_families(tunnels: Dict[str, int]) -> Iterable[Metric]:
    yield GaugeMetricFamily(
        "powerlb_tunnels_open", "Upgraded connections (WebSocket...) open now", value=tunnels.get("open", 0)
    )
    yield CounterMetricFamily(
        "powerlb_tunnels", "Upgraded connections (WebSocket...) opened", value=tunnels.get("total", 0)
    )
    carried = CounterMetricFamily(
        "powerlb_tunnel_bytes", "Bytes carried by tunnels, to backends or to clients", labels=["direction"]
    )
    for direction in ("upstream", "downstream"):
        carried.add_metric([direction], tunnels.get(f"bytes_{direction}", 0))
    yield carried


def cumulative_buckets(counts: Sequence[int]) -> List[Tuple[str, int]]:
    """Prometheus ``(le, cumulative count)`` pairs from per-bucket ``counts`` (as in a snapshot)."""
    bounds = [floatToGoString(bound) for bound in LATENCY_BUCKETS] + ["+Inf"]
    out = []
    total = 0
    for bound, count in zip(bounds, counts):
        total += count
        out.append((bound, total))
    return out
