"""The upstream latency histogram: fixed buckets counted with one bisect, kept as plain mergeable data.

No prometheus_client object is touched per request (they take a lock and a
label lookup): :meth:`LatencyHistogram.observe` adds to a list of ints and a
float on the reactor thread, and the metrics are made from the snapshot.
Bucket counts are per bucket, not cumulative, so workers' snapshots merge by
summing them element by element.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Dict, List, Tuple

#: Upper bounds (seconds, inclusive) of the buckets; one more bucket, +Inf, takes the rest.
LATENCY_BUCKETS: Tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class LatencyHistogram:
    """Seconds from a request sent upstream to its response head, counted into :data:`LATENCY_BUCKETS`."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        #: Observations per bucket (the last one is +Inf); not cumulative.
        self.counts: List[int] = [0] * (len(LATENCY_BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        """Count one response that took ``seconds``."""
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def snapshot(self) -> Dict[str, Any]:
        """``latency_sum`` (seconds), ``latency_count`` and ``latency_buckets`` (per bucket) as JSON data."""
        return {
            "latency_sum": self.sum,
            "latency_count": sum(self.counts),
            "latency_buckets": list(self.counts),
        }
