"""Live figures of one powerlb instance: request counters and the snapshot the admin listener shows
(as JSON, and as Prometheus metrics through :mod:`powerlb.metrics`).

The snapshot is plain JSON data and the only source of the metrics: with
``--workers N`` the main process merges the workers' snapshots
(:func:`powerlb.workers.merge_snapshots`) and serves the metrics from the merge.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from powerlb.backend import Backend
from powerlb.cache import ICacheStore


class Counters:
    """Request outcome counters, mutated from the reactor thread only.

    Each request to the cache counts once in one of ``cache_hits``,
    ``cache_misses``, ``cache_stale``, ``cache_revalidated``,
    ``cache_coalesced``, ``cache_bypass`` (its ``X-Cache``);
    ``cache_purged`` and ``cache_invalidated`` count stored responses removed
    by purges and by unsafe requests; ``retries`` the requests sent again to
    another backend; ``ejections_refused`` the outlier ejections not made
    because the pool's ejection cap refused them. ``tunnels_open`` and
    ``tunnels_total`` count upgraded connections (:mod:`powerlb.tunnel`),
    ``tunnel_bytes_upstream``/``_downstream`` the bytes they carried each way.
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
        "ejections_refused",
        "errors",
        "requests",
        "retries",
        "tunnel_bytes_downstream",
        "tunnel_bytes_upstream",
        "tunnels_open",
        "tunnels_total",
        "upstream_errors",
    )

    cache_bypass: int
    cache_coalesced: int
    cache_hits: int
    cache_invalidated: int
    cache_misses: int
    cache_purged: int
    cache_revalidated: int
    cache_stale: int
    cache_stores: int
    ejections_refused: int
    errors: int
    requests: int
    retries: int
    tunnel_bytes_downstream: int
    tunnel_bytes_upstream: int
    tunnels_open: int
    tunnels_total: int
    upstream_errors: int

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


def backend_entries(
    pool: str,
    backends: Sequence[Backend],
    last_check: Callable[[Backend], Optional[str]],
    connections: Callable[[Backend], Dict[str, int]],
) -> List[Dict[str, Any]]:
    """The stats' entries of one pool's backends: their figures, last health check, upstream
    connections and the ``pool`` they belong to."""
    return [{**b.snapshot(), "last_check": last_check(b), **connections(b), "pool": pool} for b in backends]


def snapshot(
    backends: List[Dict[str, Any]],
    counters: Counters,
    cache: Optional[ICacheStore],
    responses: Optional[Mapping[str, Any]] = None,
    redis: Optional[Mapping[str, Any]] = None,
) -> Dict[str, Any]:
    """Everything ``GET /api/v1/stats`` returns but the pools and routes, as plain JSON-ready data.

    ``backends`` are the entries of :func:`backend_entries`; ``responses`` is
    :meth:`powerlb.outcomes.Outcomes.snapshot`: completed requests by backend, status class and
    cache result; ``redis`` the Redis tier's and bus's figures
    (:meth:`powerlb.redistier.ClusterBus.stats`), None without one.
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
        "ejections_refused": counters.ejections_refused,
        "responses": dict(responses or {}),
        "backends": backends,
        "cache": cache_figures,
        "redis": dict(redis) if redis is not None else {"enabled": False},
        "tunnels": {
            "open": counters.tunnels_open,
            "total": counters.tunnels_total,
            "bytes_upstream": counters.tunnel_bytes_upstream,
            "bytes_downstream": counters.tunnel_bytes_downstream,
        },
    }
