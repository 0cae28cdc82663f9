"""The last 15 minutes per pool, for the dashboard's charts: req/s, error rate, p50/p99 upstream
latency and cache hit ratio, from successive stats snapshots.

Pure: :class:`SeriesKeeper` is fed ``(time, snapshot)`` pairs (the admin
listener does it every :data:`STEP` seconds, see :mod:`powerlb.admin`) and
keeps a bounded ring of samples per pool. Each sample covers the step since
the snapshot before it:

- ``rps``: completed client requests (the snapshot's ``responses``) per second;
- ``error_rate``: the share of them answered with a 5xx. A failed upstream
  attempt that reaches the client is a 5xx (502, 504) and counts once; one a
  retry recovered is not an error the client saw and does not count;
- ``p50``, ``p99`` (seconds): quantiles of the upstream latency histogram's
  growth (:data:`powerlb.latency.LATENCY_BUCKETS`), see :func:`quantile`;
- ``hit_ratio``: the share of cache look-ups answered from the cache (hit,
  stale, revalidated, coalesced) among those and the misses.

A figure with nothing to measure in a step (no requests, no look-ups) is
None: a gap in the chart, not a zero. Counters are compared per source (a
backend URL, or ``""`` for requests sent to none, e.g. cache hits): a source
new since the last snapshot counts from zero, and a counter that went back
(a ``--workers`` worker restarted, so the merged sum dropped) adds nothing
for that step.

Pools: a backend entry's ``pool`` key names its pool (missing: :data:`DEFAULT_POOL`),
see :func:`pool_of`; requests sent to no backend go to the default pool.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Deque, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from powerlb.latency import LATENCY_BUCKETS

#: Seconds between samples.
STEP = 2.0
#: Seconds of samples kept.
WINDOW = 15 * 60.0
#: The pool of backends that name none (all of them, until pools are configured).
DEFAULT_POOL = "default"
#: Cache results (lower-case ``X-Cache``) answered from the cache; ``miss`` is the other look-up.
FROM_CACHE = ("hit", "stale", "revalidated", "coalesced")
#: The figures of a sample, in the order :meth:`SeriesKeeper.series` lists them.
FIGURES = ("rps", "error_rate", "p50", "p99", "hit_ratio")

#: One source's counters: requests, 5xx, look-ups from the cache, misses, latency buckets.
Counters = Tuple[int, int, int, int, Tuple[int, ...]]


class Reading(NamedTuple):
    """What one snapshot says: each source's pool and counters."""

    pools: Dict[str, str]
    counters: Dict[str, Counters]


class Sample(NamedTuple):
    """One pool's figures over the step ending at ``at`` (None: nothing to measure)."""

    at: float
    rps: float
    error_rate: Optional[float]
    p50: Optional[float]
    p99: Optional[float]
    hit_ratio: Optional[float]


def _count(value: Any) -> int:
    """A counter from JSON data: a non-negative int, anything else 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def pool_of(backend: Mapping[str, Any]) -> str:
    """The pool a backend entry of the snapshot belongs to: its ``pool`` key, else :data:`DEFAULT_POOL`."""
    pool = backend.get("pool")
    return pool if isinstance(pool, str) and pool else DEFAULT_POOL


def read_snapshot(snapshot: Mapping[str, Any]) -> Reading:
    """Each source's pool and counters in a stats snapshot (``GET /api/v1/stats``).

    Sources are the backend URLs and the URLs under ``responses`` (``""``:
    sent to no backend); one only in ``responses`` (a backend removed since)
    is in the default pool. Malformed parts count as zero.
    """
    empty = (0,) * (len(LATENCY_BUCKETS) + 1)
    pools: Dict[str, str] = {}
    latency: Dict[str, Tuple[int, ...]] = {}
    for backend in snapshot.get("backends") or ():
        if isinstance(backend, Mapping) and isinstance(backend.get("url"), str):
            pools[backend["url"]] = pool_of(backend)
            buckets = backend.get("latency_buckets")
            if isinstance(buckets, list) and len(buckets) == len(empty):
                latency[backend["url"]] = tuple(_count(n) for n in buckets)
    responses = snapshot.get("responses")
    responses = responses if isinstance(responses, Mapping) else {}
    counters: Dict[str, Counters] = {}
    for source in dict.fromkeys([*pools, *responses]):
        pools.setdefault(source, DEFAULT_POOL)
        by_class = responses.get(source)
        requests = errors = from_cache = misses = 0
        for status_class, by_cache in by_class.items() if isinstance(by_class, Mapping) else ():
            for result, count in by_cache.items() if isinstance(by_cache, Mapping) else ():
                count = _count(count)
                requests += count
                errors += count if status_class == "5xx" else 0
                from_cache += count if result in FROM_CACHE else 0
                misses += count if result == "miss" else 0
        counters[source] = (requests, errors, from_cache, misses, latency.get(source, empty))
    return Reading(pools, counters)


def growth(now: int, before: int) -> int:
    """How much a counter grew between two readings; 0 when it went back (a restart)."""
    return now - before if now >= before else 0


def pool_growth(now: Reading, before: Reading) -> Dict[str, Counters]:
    """Per pool of ``now``, the sum of its sources' counter growth since ``before``
    (each counter by :func:`growth`; a source new in ``now`` counts from zero)."""
    totals: Dict[str, Counters] = {}
    for source, counters in now.counters.items():
        old = before.counters.get(source)
        grown = counters if old is None else _grown(counters, old)
        pool = now.pools[source]
        total = totals.get(pool)
        totals[pool] = grown if total is None else _added(total, grown)
    return totals


def _grown(now: Counters, before: Counters) -> Counters:
    return (
        growth(now[0], before[0]),
        growth(now[1], before[1]),
        growth(now[2], before[2]),
        growth(now[3], before[3]),
        tuple(growth(n, b) for n, b in zip(now[4], before[4])),
    )


def _added(a: Counters, b: Counters) -> Counters:
    return (a[0] + b[0], a[1] + b[1], a[2] + b[2], a[3] + b[3], tuple(x + y for x, y in zip(a[4], b[4])))


def quantile(q: float, counts: Sequence[int], bounds: Sequence[float] = LATENCY_BUCKETS) -> Optional[float]:
    """The ``q``-quantile (0 <= q <= 1) of observations counted per bucket (``counts``, not
    cumulative; bucket ``i`` holds values up to ``bounds[i]``, the last one, past ``bounds[-1]``,
    the rest); None when there are none.

    As Prometheus' ``histogram_quantile``: the bucket holding the observation
    of rank ``q * total`` is found and the value interpolated linearly
    between its lower and upper bound, assuming its observations are spread
    evenly (the first bucket starts at 0). A rank in the last, unbounded
    bucket gives ``bounds[-1]``, the most the histogram can tell.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"the quantile {q} is not between 0 and 1")
    if len(counts) != len(bounds) + 1:
        raise ValueError(f"{len(counts)} bucket counts for {len(bounds)} bounds; give one count more")
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    below = 0
    for index, upper in enumerate(bounds):
        count = counts[index]
        if count and below + count >= rank:
            lower = bounds[index - 1] if index else 0.0
            return lower + (upper - lower) * (rank - below) / count
        below += count
    return bounds[-1]  # the rank is in the last, unbounded bucket


def _share(part: int, whole: int) -> Optional[float]:
    return round(part / whole, 4) if whole else None


def _seconds(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 6)


def sample(at: float, seconds: float, grown: Counters) -> Sample:
    """A pool's :class:`Sample` from its counters' growth ``grown`` over ``seconds`` (> 0)."""
    requests, errors, from_cache, misses, latency = grown
    return Sample(
        at,
        round(requests / seconds, 3),
        _share(min(errors, requests), requests),  # more: a restart hid some requests
        _seconds(quantile(0.5, latency)),
        _seconds(quantile(0.99, latency)),
        _share(from_cache, from_cache + misses),
    )


class SeriesKeeper:
    """Per pool, the samples of the last ``window`` seconds, one per call of :meth:`add`.

    Memory is bounded: at most ``window / step`` samples per pool, and a
    pool that stops appearing in the snapshots is dropped once its newest
    sample is older than ``window``.
    """

    def __init__(self, step: float = STEP, window: float = WINDOW) -> None:
        if step <= 0 or window < step:
            raise ValueError(f"the step ({step} s) must be > 0 and at most the window ({window} s)")
        self.step = step
        self.window = window
        self.capacity = int(window // step)
        self.pools: Dict[str, Deque[Sample]] = {}
        self._last: Optional[Tuple[float, Reading]] = None

    def add(self, at: float, snapshot: Mapping[str, Any]) -> None:
        """Take the snapshot made at ``at`` (seconds); from the second one on, it adds a sample per pool.

        A time not after the last one's only replaces the reading compared against.
        """
        reading = read_snapshot(snapshot)
        last = self._last
        self._last = (at, reading)
        if last is None or at <= last[0]:
            return
        for pool, grown in pool_growth(reading, last[1]).items():
            ring = self.pools.get(pool)
            if ring is None:
                ring = self.pools[pool] = deque(maxlen=self.capacity)
            ring.append(sample(at, at - last[0], grown))
        oldest = at - self.window
        for pool in list(self.pools):
            ring = self.pools[pool]
            while ring and ring[0].at <= oldest:
                ring.popleft()
            if not ring:
                del self.pools[pool]

    def series(self) -> Dict[str, Any]:
        """As JSON data: ``step``, ``window``, ``now`` (the last snapshot's time, None before any)
        and ``pools``: name -> ``{"at": [...], "rps": [...], ...}``, a list per :data:`FIGURES`,
        oldest first."""
        pools: Dict[str, Dict[str, List[Any]]] = {}
        for name in sorted(self.pools):
            ring = self.pools[name]
            pools[name] = {field: [getattr(s, field) for s in ring] for field in ("at", *FIGURES)}
        return {
            "step": self.step,
            "window": self.window,
            "now": None if self._last is None else self._last[0],
            "pools": pools,
        }
