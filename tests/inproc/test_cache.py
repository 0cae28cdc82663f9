"""Tests for the response cache store, its entries and its sweeper."""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from powerlb.cache import (
    ENTRY_OVERHEAD,
    KEEP_FOR_REVALIDATION,
    CachedResponse,
    CacheSweeper,
    ICacheStore,
    LRUCache,
)
from powerlb.cachepolicy import Rules, VaryKey, plan_store, vary_values
from powerlb.headers import Headers

ACCEPT = (b"accept",)


def response(
    body_len: int = 0,
    lifetime: float = 60.0,
    response_time: float = 0.0,
    initial_age: float = 0.0,
    vary: Tuple[bytes, ...] = (),
    vary_key: VaryKey = (),
) -> CachedResponse:
    """A stored 200 response with ``body_len`` body bytes and no headers."""
    return CachedResponse(
        status=200,
        reason=b"OK",
        headers=[],
        body=b"x" * body_len,
        response_time=response_time,
        initial_age=initial_age,
        freshness_lifetime=lifetime,
        vary=vary,
        vary_key=vary_key,
    )


def accept(value: Optional[bytes]) -> Headers:
    """Request headers with ``Accept: value``, or none when ``value`` is None."""
    return [] if value is None else [(b"accept", value)]


def variant(value: Optional[bytes], body_len: int = 0, lifetime: float = 60.0) -> CachedResponse:
    """A response varying on Accept, stored for a request with ``Accept: value``."""
    return response(body_len, lifetime, vary=ACCEPT, vary_key=vary_values(ACCEPT, accept(value)))


# --- CachedResponse ----------------------------------------------------------------------------


def test_size_counts_body_reason_headers_and_overhead() -> None:
    entry = CachedResponse(200, b"OK", [(b"a", b"bc")], b"12345", 0.0, 0.0, 10.0)
    assert entry.size == 5 + 2 + 3 + ENTRY_OVERHEAD


def test_age_and_freshness() -> None:
    """RFC 9111 sections 4.2 and 4.2.3: fresh while the current age is below the lifetime."""
    entry = response(lifetime=10.0, response_time=100.0, initial_age=4.0)
    assert entry.expires_at == 106.0
    assert entry.age(103.0) == 7.0
    assert entry.is_fresh(105.9)
    assert not entry.is_fresh(106.0)


def test_from_plan_strips_age_and_hop_by_hop_and_keys_vary() -> None:
    """RFC 9111 sections 3.1 and 4.1: stored headers drop Age/hop-by-hop; vary_key from request."""
    response_headers = [
        (b"cache-control", b"max-age=60"),
        (b"age", b"5"),
        (b"connection", b"x-hop"),
        (b"x-hop", b"1"),
        (b"keep-alive", b"timeout=5"),
        (b"vary", b"Accept"),
        (b"etag", b'"v1"'),
    ]
    request_headers = [(b"accept", b"text/html")]
    plan = plan_store(b"GET", request_headers, 200, response_headers, 10.0, 11.0)
    assert plan is not None
    entry = CachedResponse.from_plan(plan, 200, b"OK", response_headers, b"body", request_headers)
    assert entry.headers == [
        (b"cache-control", b"max-age=60"),
        (b"vary", b"Accept"),
        (b"etag", b'"v1"'),
    ]
    assert entry.vary == ACCEPT
    assert entry.vary_key == (b"text/html",)
    assert (entry.initial_age, entry.freshness_lifetime, entry.response_time) == (6.0, 60.0, 11.0)
    assert (entry.status, entry.reason, entry.body) == (200, b"OK", b"body")


# --- LRUCache ----------------------------------------------------------------------------------


def test_provides_interface() -> None:
    assert verifyObject(ICacheStore, LRUCache(clock=Clock()))


def test_rejects_negative_limits() -> None:
    with pytest.raises(ValueError):
        LRUCache(max_bytes=-1, clock=Clock())


def test_get_hit_and_miss() -> None:
    cache = LRUCache(clock=Clock())
    entry = response(10)
    assert cache.put(b"k", entry)
    assert cache.get(b"k", []) is entry
    assert cache.get(b"other", []) is None
    assert cache.stats() == {
        "entries": 1,
        "bytes": entry.size,
        "max_bytes": 64 * 1024 * 1024,
        "max_object": 1024 * 1024,
        "stores": 1,
        "evictions": 0,
        "expired": 0,
    }


def test_lru_eviction_order_follows_gets() -> None:
    size = response(100).size
    cache = LRUCache(max_bytes=3 * size, clock=Clock())
    for key in (b"a", b"b", b"c"):
        assert cache.put(key, response(100))
    assert cache.get(b"a", []) is not None  # a becomes most recent; b is now the oldest
    assert cache.put(b"d", response(100))
    assert sorted(cache.keys()) == [b"a", b"c", b"d"]
    assert cache.put(b"e", response(100))
    assert sorted(cache.keys()) == [b"a", b"d", b"e"]
    assert cache.stats()["evictions"] == 2
    assert cache.stats()["bytes"] == 3 * size


def test_big_entry_evicts_several() -> None:
    small = response(0).size
    cache = LRUCache(max_bytes=4 * small, clock=Clock())
    for key in (b"a", b"b", b"c"):
        cache.put(key, response(0))
    assert cache.put(b"big", response(3 * small))
    assert list(cache.keys()) == [b"big"]
    assert cache.stats()["evictions"] == 3


def test_byte_bound_is_exact() -> None:
    size = response(0).size
    cache = LRUCache(max_bytes=2 * size, clock=Clock())
    cache.put(b"a", response(0))
    cache.put(b"b", response(0))
    assert cache.stats()["bytes"] == 2 * size
    assert cache.put(b"a", response(1))  # one byte too many for both: b is evicted
    assert list(cache.keys()) == [b"a"]
    assert cache.stats()["bytes"] == size + 1


def test_object_limit() -> None:
    limit = response(1000).size
    cache = LRUCache(max_bytes=10 * limit, max_object=limit, clock=Clock())
    assert not cache.put(b"big", response(1001))
    assert cache.get(b"big", []) is None
    assert cache.stats()["stores"] == 0
    assert cache.put(b"fits", response(1000))


def test_object_bigger_than_whole_cache_not_stored() -> None:
    cache = LRUCache(max_bytes=response(0).size, max_object=10**6, clock=Clock())
    cache.put(b"small", response(0))
    assert not cache.put(b"big", response(1))
    assert list(cache.keys()) == [b"small"]


def test_put_replaces_same_variant() -> None:
    cache = LRUCache(clock=Clock())
    cache.put(b"k", response(10))
    newer = response(50)
    assert cache.put(b"k", newer)
    assert cache.get(b"k", []) is newer
    assert cache.stats()["entries"] == 1
    assert cache.stats()["bytes"] == newer.size


def test_put_already_expired_is_refused() -> None:
    """RFC 9111 section 4.2.3: an entry whose age already reaches its lifetime is stale."""
    cache = LRUCache(clock=Clock())
    assert not cache.put(b"k", response(lifetime=5.0, initial_age=5.0))
    assert cache.stats()["entries"] == 0


def test_lazy_expiry_on_get() -> None:
    """RFC 9111 section 4.2: with no keep_stale an entry is dropped once it is stale."""
    clock = Clock()
    cache = LRUCache(clock=clock)
    cache.put(b"k", response(lifetime=10.0))
    clock.advance(9.5)
    assert cache.get(b"k", []) is not None
    clock.advance(0.5)
    assert cache.get(b"k", []) is None
    assert cache.stats()["entries"] == 0
    assert cache.stats()["bytes"] == 0
    assert cache.stats()["expired"] == 1
    assert list(cache.keys()) == []


def test_keep_stale_returns_stale_entries_until_drop_time() -> None:
    """RFC 9111 section 4.2.4 / RFC 5861: stale entries are kept for keep_stale seconds."""
    clock = Clock()
    cache = LRUCache(clock=clock, keep_stale=30.0)
    cache.put(b"k", response(lifetime=10.0))
    clock.advance(20.0)
    entry = cache.get(b"k", [])
    assert entry is not None
    assert not entry.is_fresh(clock.seconds())
    clock.advance(20.0)
    assert cache.get(b"k", []) is None


def test_sweep_removes_expired() -> None:
    clock = Clock()
    cache = LRUCache(clock=clock)
    cache.put(b"short", response(lifetime=5.0))
    cache.put(b"long", response(lifetime=50.0))
    assert cache.sweep() == 0
    clock.advance(10.0)
    assert cache.sweep() == 1
    assert list(cache.keys()) == [b"long"]
    assert cache.stats()["expired"] == 1
    assert cache.stats()["bytes"] == response().size
    clock.advance(100.0)
    assert cache.sweep() == 1
    assert cache.stats()["entries"] == 0


def test_sweep_skips_replaced_and_removed_entries() -> None:
    clock = Clock()
    cache = LRUCache(clock=clock)
    cache.put(b"k", response(lifetime=5.0))
    cache.put(b"k", response(lifetime=100.0))
    cache.put(b"gone", response(lifetime=5.0))
    assert cache.remove(b"gone") == 1
    clock.advance(10.0)
    assert cache.sweep() == 0
    assert list(cache.keys()) == [b"k"]


def test_heap_stays_bounded_under_replacement() -> None:
    cache = LRUCache(clock=Clock())
    for _ in range(1000):
        cache.put(b"k", response())
    assert len(cache._heap) <= 2 * cache.stats()["entries"] + 65


def test_variants_side_by_side() -> None:
    """RFC 9111 section 4.1: responses varying on Accept are stored per request value."""
    cache = LRUCache(clock=Clock())
    html = variant(b"text/html")
    json = variant(b"application/json")
    assert cache.put(b"k", html)
    assert cache.put(b"k", json)
    assert cache.get(b"k", accept(b"text/html")) is html
    assert cache.get(b"k", accept(b"application/json")) is json
    assert cache.get(b"k", accept(None)) is None
    assert cache.get(b"k", accept(b"")) is None
    assert list(cache.keys()) == [b"k"]
    assert cache.stats()["entries"] == 2
    assert cache.remove(b"k") == 2
    assert cache.get(b"k", accept(b"text/html")) is None
    assert cache.stats()["entries"] == 0
    assert cache.stats()["bytes"] == 0
    assert list(cache.keys()) == []
    assert cache.remove(b"k") == 0


def test_changed_vary_names_replace_all_variants() -> None:
    """RFC 9111 section 4.1: the most recent response wins when the Vary names change."""
    cache = LRUCache(clock=Clock())
    cache.put(b"k", variant(b"a"))
    cache.put(b"k", variant(b"b"))
    plain = response()
    assert cache.put(b"k", plain)
    assert cache.get(b"k", accept(b"a")) is plain
    assert cache.stats()["entries"] == 1
    assert cache.stats()["bytes"] == plain.size


def test_keys_is_a_snapshot_for_prefix_purge() -> None:
    cache = LRUCache(clock=Clock())
    for key in (b"http://h/a/1", b"http://h/a/2", b"http://h/b"):
        cache.put(key, response())
    removed = 0
    for key in cache.keys():  # noqa: SIM118 - ICacheStore.keys(), not a dict
        if key.startswith(b"http://h/a/"):
            removed += cache.remove(key)
    assert removed == 2
    assert list(cache.keys()) == [b"http://h/b"]


# --- model-based property test ----------------------------------------------------------------

MAX_BYTES = 2000
MAX_OBJECT = 900
KEEP_STALE = 3.0

keys = st.sampled_from([b"a", b"b", b"c"])
accept_values = st.sampled_from([b"v1", b"v2", None])
operations = st.one_of(
    st.tuples(
        st.just("put"),
        keys,
        st.booleans(),
        accept_values,
        st.integers(0, 1000),
        st.floats(0, 40),
        st.floats(0, 10),
    ),
    st.tuples(st.just("get"), keys, accept_values),
    st.tuples(st.just("remove"), keys),
    st.tuples(st.just("advance"), st.floats(0, 20)),
    st.tuples(st.just("sweep")),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(operations, max_size=40))
def test_random_operations_match_reference_model(ops: List[tuple]) -> None:
    """Random put/get/remove/advance/sweep: byte bound, counts and LRU choices match a model."""
    clock = Clock()
    cache = LRUCache(MAX_BYTES, MAX_OBJECT, clock=clock, keep_stale=KEEP_STALE)
    model: OrderedDict[Tuple[bytes, VaryKey], Tuple[CachedResponse, float]] = OrderedDict()
    for op in ops:
        now = clock.seconds()
        if op[0] == "put":
            _, key, varies, value, body_len, lifetime, initial_age = op
            vary = ACCEPT if varies else ()
            entry = response(body_len, lifetime, now, initial_age, vary, vary_values(vary, accept(value)))
            drop_at = entry.expires_at + KEEP_STALE
            storable = entry.size <= MAX_OBJECT and drop_at > now
            assert cache.put(key, entry) is storable
            if storable:
                for k in [k for k, (e, _) in model.items() if k[0] == key and e.vary != vary]:
                    del model[k]
                model.pop((key, entry.vary_key), None)
                while sum(e.size for e, _ in model.values()) + entry.size > MAX_BYTES:
                    model.popitem(last=False)
                model[(key, entry.vary_key)] = (entry, drop_at)
        elif op[0] == "get":
            _, key, value = op
            found = cache.get(key, accept(value))
            matching = [
                (k, e, d)
                for k, (e, d) in model.items()
                if k[0] == key and k[1] == vary_values(e.vary, accept(value))
            ]
            expected = None
            if matching:
                k, e, drop_at = matching[0]
                if drop_at <= now:
                    del model[k]
                else:
                    model.move_to_end(k)
                    expected = e
            assert found is expected
        elif op[0] == "remove":
            doomed = [k for k in model if k[0] == op[1]]
            for k in doomed:
                del model[k]
            assert cache.remove(op[1]) == len(doomed)
        elif op[0] == "advance":
            clock.advance(op[1])
        else:
            dead = [k for k, (_, drop_at) in model.items() if drop_at <= now]
            for k in dead:
                del model[k]
            assert cache.sweep() == len(dead)
        stats = cache.stats()
        assert stats["bytes"] == sum(e.size for e, _ in model.values())
        assert stats["bytes"] <= MAX_BYTES
        assert stats["entries"] == len(model)
        assert sorted(cache.keys()) == sorted({k[0] for k in model})


# --- CacheSweeper ------------------------------------------------------------------------------


def test_sweeper_runs_periodically_while_running() -> None:
    clock = Clock()
    cache = LRUCache(clock=clock)
    sweeper = CacheSweeper(cache, clock, interval=10.0)
    cache.put(b"k", response(lifetime=5.0))
    sweeper.startService()
    clock.advance(9.0)
    assert cache.stats()["expired"] == 0
    clock.advance(1.0)
    assert cache.stats()["expired"] == 1
    cache.put(b"k2", response(lifetime=5.0, response_time=clock.seconds()))
    clock.advance(10.0)
    assert cache.stats()["expired"] == 2
    sweeper.stopService()
    assert not clock.getDelayedCalls()
    cache.put(b"k3", response(lifetime=5.0, response_time=clock.seconds()))
    clock.advance(30.0)
    assert cache.stats()["expired"] == 2
    assert cache.stats()["entries"] == 1


def test_drop_time_keeps_revalidatable_and_stale_windows() -> None:
    """RFC 9111 section 4.3 and RFC 5861: entries stay past freshness when they can still serve."""
    plain = response(lifetime=10.0)
    assert plain.drop_at(0.0) == 10.0
    assert plain.drop_at(5.0) == 15.0
    windows = CachedResponse(200, b"OK", [], b"", 0.0, 0.0, 10.0, rules=Rules(stale_while_revalidate=30))
    assert windows.drop_at(5.0) == 40.0
    validated = CachedResponse(200, b"OK", [(b"etag", b'"1"')], b"", 0.0, 0.0, 10.0)
    assert validated.drop_at(0.0) == 10.0 + KEEP_FOR_REVALIDATION
    clock = Clock()
    cache = LRUCache(clock=clock)
    assert cache.put(b"k", CachedResponse(200, b"OK", [(b"etag", b'"1"')], b"", 0.0, 0.0, 0.0))
    clock.advance(KEEP_FOR_REVALIDATION - 1)
    assert cache.get(b"k", []) is not None
