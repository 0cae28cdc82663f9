"""--workers: the supervisor's merge of the workers' stats (pure); the workers themselves run in
tests/process/test_workers.py."""

from __future__ import annotations

from powerlb.workers import merge_snapshots


def snapshot(requests: int, healthy: bool, hits: int, misses: int) -> dict:
    return {
        "requests": requests,
        "backends": [
            {"url": "http://b", "weight": 3, "healthy": healthy, "in_flight": 1, "requests": requests}
        ],
        "cache": {"enabled": True, "hits": hits, "misses": misses, "hit_ratio": 0.0, "max_bytes": 64},
    }


def test_merge_sums_counters_keeps_identity_and_needs_every_worker_healthy() -> None:
    merged = merge_snapshots([snapshot(3, True, 1, 1), snapshot(5, False, 2, 0)])
    assert merged["requests"] == 8
    backend = merged["backends"][0]
    assert (backend["url"], backend["weight"], backend["healthy"], backend["in_flight"]) == (
        "http://b",
        3,
        False,
        2,
    )
    assert merged["cache"]["max_bytes"] == 64
    assert merged["cache"]["hit_ratio"] == 0.75
    assert merge_snapshots([]) == {}


def test_merge_takes_every_worker_keys_and_sums_histogram_buckets() -> None:
    one = {
        "responses": {"http://b": {"2xx": {"miss": 2}}},
        "backends": [{"url": "http://b", "latency_sum": 0.5, "latency_buckets": [1, 0, 1]}],
    }
    two = {
        "responses": {
            "http://b": {"2xx": {"miss": 1, "bypass": 1}, "5xx": {"miss": 1}},
            "": {"2xx": {"hit": 4}},
        },
        "backends": [{"url": "http://b", "latency_sum": 0.25, "latency_buckets": [0, 2, 1]}],
    }
    merged = merge_snapshots([one, two])
    assert merged["responses"] == {
        "http://b": {"2xx": {"miss": 3, "bypass": 1}, "5xx": {"miss": 1}},
        "": {"2xx": {"hit": 4}},
    }
    assert merged["backends"] == [{"url": "http://b", "latency_sum": 0.75, "latency_buckets": [1, 2, 2]}]


def test_merge_matches_backends_by_url_and_keeps_per_backend_settings() -> None:
    def backend(url: str, requests: int) -> dict:
        return {"url": url, "id": url[7:], "weight": 2, "effective_weight": 2.0, "requests": requests}

    # mid-reload: the second worker already has c and no longer b
    one = {"backends": [backend("http://a", 1), backend("http://b", 2)]}
    two = {"backends": [backend("http://a", 10), backend("http://c", 30)]}
    merged = merge_snapshots([one, two])["backends"]
    assert [(b["url"], b["requests"], b["weight"], b["effective_weight"]) for b in merged] == [
        ("http://a", 11, 2, 2.0),
        ("http://b", 2, 2, 2.0),
        ("http://c", 30, 2, 2.0),
    ]


def test_merged_hit_ratio_counts_every_answer_from_the_cache_as_one_process_does() -> None:
    cache = {"hits": 1, "stale": 1, "revalidated": 0, "coalesced": 1, "misses": 1}
    merged = merge_snapshots([{"cache": dict(cache)}, {"cache": dict(cache)}])
    assert merged["cache"]["hit_ratio"] == 0.75


def pooled(requests: int, refused: int) -> dict:
    """A worker's snapshot with the same backend URL in two pools, two pools and two routes."""
    return {
        "backends": [
            {"pool": "web", "url": "http://b", "requests": requests},
            {"pool": "api", "url": "http://b", "requests": 1},
        ],
        "pools": [
            {"name": "web", "algorithm": "round-robin", "backends": 1, "healthy": 1, "default": True},
            {"name": "api", "algorithm": "least-connections", "backends": 1, "healthy": 1, "default": False},
        ],
        "routes": [
            {"route": "0", "pool": "api", "match": "host api", "requests": 2, "refusals": {"acl": refused}},
            {"route": "1", "pool": "web", "match": "*", "requests": requests, "refusals": {}},
        ],
    }


def test_merge_keeps_pools_apart_and_sums_routes() -> None:
    merged = merge_snapshots([pooled(3, 1), pooled(4, 2)])
    assert [(b["pool"], b["url"], b["requests"]) for b in merged["backends"]] == [
        ("web", "http://b", 7),
        ("api", "http://b", 2),
    ]
    assert merged["pools"] == pooled(0, 0)["pools"]
    assert [(r["route"], r["pool"], r["requests"], r["refusals"]) for r in merged["routes"]] == [
        ("0", "api", 4, {"acl": 3}),
        ("1", "web", 7, {}),
    ]
