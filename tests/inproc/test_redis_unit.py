"""The Redis tier's pure parts and its hook in the cache layer, without a Redis: entry frames,
TTLs, the redis-* settings, bus messages, the store's timeout, and the cache layer over a fake
second tier (tests/support/caching.py's request path on a task.Clock)."""

from __future__ import annotations

import contextlib
import struct
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from powerlb.cache import KEEP_FOR_REVALIDATION, CachedResponse, remote_ttl
from powerlb.cachepolicy import Rules
from powerlb.config import ConfigError, config_from_mapping
from powerlb.control import Change, ProtocolError
from powerlb.headers import get_first
from powerlb.redistier import (
    FRAME_VERSION,
    TIMEOUTS_TO_RECONNECT,
    FrameError,
    IRemoteStore,
    RedisStore,
    bus_message,
    frame,
    glob_escape,
    read_bus_message,
    unframe,
)
from powerlb.values import RedisAddress, parse_env_name, read_password, redis_address
from tests.support import REPO
from tests.support.caching import CACHEABLE, Proxy, results

# --- frames -----------------------------------------------------------------------------------

_bytes = st.binary(max_size=40)
_times = st.floats(min_value=0, max_value=1e9, allow_nan=False)


@st.composite
def entries(draw: Any) -> CachedResponse:
    vary = tuple(draw(st.lists(_bytes, max_size=3)))
    return CachedResponse(
        status=draw(st.integers(100, 999)),
        reason=draw(_bytes),
        headers=draw(st.lists(st.tuples(_bytes, _bytes), max_size=5)),
        body=draw(st.binary(max_size=300)),
        response_time=draw(_times),
        initial_age=draw(_times),
        freshness_lifetime=draw(_times),
        vary=vary,
        vary_key=tuple(draw(st.one_of(st.none(), _bytes)) for _ in vary),
        rules=Rules(draw(st.booleans()), draw(st.booleans()), draw(_times), draw(_times)),
    )


def fields(entry: CachedResponse) -> Tuple[Any, ...]:
    return tuple(getattr(entry, name) for name in CachedResponse.__slots__)


@given(entries())
def test_a_framed_entry_comes_back_the_same(entry: CachedResponse) -> None:
    assert fields(unframe(frame(entry))) == fields(entry)


@given(entries(), st.data())
def test_a_cut_or_altered_frame_is_refused_cleanly(entry: CachedResponse, data: Any) -> None:
    framed = frame(entry)
    cut = data.draw(st.integers(0, len(framed) - 1))
    with pytest.raises(FrameError):
        unframe(framed[:cut])
    with pytest.raises(FrameError):
        unframe(framed + b"x")
    at = data.draw(st.integers(0, len(framed) - 1))
    altered = framed[:at] + bytes([framed[at] ^ data.draw(st.integers(1, 255))]) + framed[at + 1 :]
    with contextlib.suppress(FrameError):  # some bytes (a body byte, a time) may take any value
        unframe(altered)


@given(st.binary(max_size=200))
def test_garbage_never_raises_anything_but_a_frame_error(data: bytes) -> None:
    with contextlib.suppress(FrameError):
        unframe(data)


ENTRY = CachedResponse(200, b"OK", [(b"content-type", b"text/plain")], b"body", 1000.0, 0.0, 60.0)


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"PLB" + bytes([FRAME_VERSION + 1]) + frame(ENTRY)[4:], "version"),
        (b"XYZ" + frame(ENTRY)[3:], "not an entry frame"),
        (frame(ENTRY)[:-1], "truncated"),
        (frame(ENTRY)[:10], "truncated"),
        (frame(CachedResponse(200, b"", [], b"", 1.0, 0.0, float("inf"))), "not finite"),
        (b"", "truncated"),
    ],
)
def test_bad_frames_say_what_is_wrong(data: bytes, problem: str) -> None:
    with pytest.raises(FrameError, match=problem):
        unframe(data)


def test_a_count_larger_than_the_frame_is_refused_before_reading() -> None:
    head = frame(CachedResponse(200, b"", [], b"", 1.0, 0.0, 1.0))[: struct.calcsize(">3sBHB5d") + 4]
    with pytest.raises(FrameError, match="count larger"):
        unframe(head + struct.pack(">I", 2**32 - 1))


# --- TTLs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers, rules, keep_stale, now, ttl_ms",
    [
        ([], Rules(), 0.0, 1000.0, 60_000),  # fresh for 60 s
        ([], Rules(), 0.0, 1030.5, 29_500),
        ([], Rules(), 10.0, 1000.0, 70_000),  # grace
        ([], Rules(stale_while_revalidate=30), 0.0, 1000.0, 90_000),
        ([], Rules(stale_if_error=300), 10.0, 1000.0, 360_000),
        ([(b"etag", b'"v1"')], Rules(), 0.0, 1000.0, int((60 + KEEP_FOR_REVALIDATION) * 1000)),
        ([], Rules(), 0.0, 1060.0, 0),  # stale, nothing keeps it: not worth storing
    ],
)
def test_the_redis_ttl_is_the_remaining_usable_lifetime(
    headers: List[Any], rules: Rules, keep_stale: float, now: float, ttl_ms: int
) -> None:
    entry = CachedResponse(200, b"OK", headers, b"", 1000.0, 0.0, 60.0, rules=rules)
    assert remote_ttl(entry, keep_stale, now) == ttl_ms


# --- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, address",
    [
        ("redis://127.0.0.1:6380/2", RedisAddress("127.0.0.1", 6380, 2, False)),
        ("redis://cache.internal", RedisAddress("cache.internal", 6379, 0, False)),
        ("rediss://user@[::1]:6379/", RedisAddress("::1", 6379, 0, True)),
    ],
)
def test_redis_urls(url: str, address: RedisAddress) -> None:
    assert redis_address(url) == address


@pytest.mark.parametrize(
    "url, problem",
    [
        ("http://127.0.0.1:6379", "not a redis:// or rediss:// URL"),
        ("redis://:secret@127.0.0.1", "use redis-password-env or redis-password-file"),
        ("redis://127.0.0.1:99999", "bad port"),
        ("redis:///0", "names no host"),
        ("redis://127.0.0.1/zero", "database number"),
    ],
)
def test_bad_redis_urls_say_what_to_write(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        redis_address(url)


def test_env_names() -> None:
    assert parse_env_name("REDIS_PASSWORD") == "REDIS_PASSWORD"
    with pytest.raises(ValueError, match="not an environment variable name"):
        parse_env_name("1-BAD")


BACKENDS = {"backends": ["http://127.0.0.1:9001"]}


def test_redis_settings_parse(tmp_path: Any, monkeypatch: Any) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret\n")
    config = config_from_mapping(
        {
            **BACKENDS,
            "redis": "redis://127.0.0.1:6379/1",
            "redis-key-prefix": "edge:",
            "redis-timeout": "20ms",
            "redis-password-file": str(secret),
        }
    )
    assert (config.redis, config.redis_key_prefix, config.redis_timeout) == (
        "redis://127.0.0.1:6379/1",
        "edge:",
        0.02,
    )
    assert config_from_mapping({**BACKENDS}).redis_timeout == 0.05


def test_the_password_comes_from_the_variable_when_set_else_from_the_file(
    tmp_path: Any, monkeypatch: Any
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-file\nignored\n")
    monkeypatch.delenv("POWERLB_TEST_PW", raising=False)
    assert read_password("POWERLB_TEST_PW", str(secret)) == "from-file"
    monkeypatch.setenv("POWERLB_TEST_PW", "from-env")
    assert read_password("POWERLB_TEST_PW", str(secret)) == "from-env"
    assert read_password(None, None) is None


@pytest.mark.parametrize(
    "settings, field, problem",
    [
        ({"redis-timeout": "1s"}, "redis-timeout", "only with redis"),
        ({"redis-key-prefix": "x:"}, "redis-key-prefix", "only with redis"),
        ({"redis": "redis://h", "redis-password-env": "POWERLB_TEST_UNSET"}, "redis-password-env", "not set"),
        (
            {"redis": "redis://h", "redis-password-file": "/nonexistent/pw"},
            "redis-password-file",
            "cannot read",
        ),
        (
            {
                "redis": "redis://h",
                "redis-password-env": "POWERLB_TEST_UNSET",
                "redis-password-file": "/no/pw",
            },
            "redis-password-file",
            "cannot read",
        ),
        ({"redis": "redis://h", "redis-timeout": "0s"}, "redis-timeout", "more than zero"),
    ],
)
def test_redis_settings_cross_checks(settings: Dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem) as raised:
        config_from_mapping({**BACKENDS, **settings})
    assert raised.value.field == field


# --- bus messages -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        Change("purge", key=b"http://example/a\xff", prefix=True),
        Change("set", backend="127.0.0.1:9001", state="draining"),
        Change("add", backend="http://127.0.0.1:9002", weight=2),
        Change("remove", backend="127.0.0.1:9001"),
    ],
)
def test_bus_messages_carry_the_sender_and_the_change(change: Change) -> None:
    assert read_bus_message(bus_message("node-a", change)) == ("node-a", change)


@pytest.mark.parametrize(
    "data",
    [b"", b"[]", b'{"change": {"op": "purge", "key": "x", "prefix": false}}', b'{"from": "a", "change": 1}'],
)
def test_bad_bus_messages_are_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError):
        read_bus_message(data)


def test_glob_escape_matches_only_itself() -> None:
    assert glob_escape(b"http://h/a*b?[c]\\") == b"http://h/a\\*b\\?\\[c\\]\\\\"


# --- the store's timeout ----------------------------------------------------------------------


class SilentRedis:
    """A connection whose commands never answer (a Redis gone slow)."""

    def __init__(self) -> None:
        self.sent: List[Tuple[Any, ...]] = []
        self.transport = StringTransport()

    def execute_command(self, *args: Any) -> defer.Deferred:
        self.sent.append(args)
        return defer.Deferred()


def silent_store(clock: Clock) -> RedisStore:
    store = RedisStore(RedisAddress("127.0.0.1", 6379, 0, False), b"p:", 0.05, clock)
    store.link = type("Link", (), {"connection": SilentRedis()})()
    store.up = True
    return store


def test_a_slow_lookup_is_a_miss_after_the_timeout_and_a_slow_store_is_dropped() -> None:
    clock = Clock()
    store = silent_store(clock)
    got, put = store.get(b"http://h/x"), store.put(b"http://h/x", ENTRY, 60_000)
    assert not got.called
    clock.advance(0.05)
    assert got.result == [] and put.result is False
    assert {k: store.stats()[k] for k in ("misses", "timeouts", "dropped", "errors")} == {
        "misses": 1,
        "timeouts": 2,
        "dropped": 1,
        "errors": 0,
    }


def test_a_hung_redis_is_dropped_after_timeouts_in_a_row_not_before() -> None:
    clock = Clock()
    store = silent_store(clock)
    conn = store.link.connection
    for _ in range(TIMEOUTS_TO_RECONNECT - 1):
        store.get(b"k")
        clock.advance(0.05)
    assert not conn.transport.disconnecting
    store.get(b"k")
    clock.advance(0.05)
    assert conn.transport.disconnecting


def test_a_lookup_while_redis_is_down_is_a_miss_at_once() -> None:
    store = RedisStore(RedisAddress("127.0.0.1", 6379, 0, False), b"p:", 0.05, Clock())
    assert store.get(b"k").result == []
    assert store.put(b"k", ENTRY, 1000).result is False
    assert store.stats()["up"] is False and store.stats()["errors"] == 2


# --- the cache layer over a second tier --------------------------------------------------------


@implementer(IRemoteStore)
class FakeTier:
    """A second tier whose lookups answer when the test says (:meth:`answer`)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.lookups: List[Tuple[bytes, defer.Deferred]] = []
        self.stored: List[Tuple[bytes, CachedResponse, int]] = []

    def get(self, key: bytes) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.lookups.append((key, d))
        return d

    def put(self, key: bytes, entry: CachedResponse, ttl: int) -> defer.Deferred:
        self.stored.append((key, entry, ttl))
        return defer.succeed(True)

    def answer(self, found: List[CachedResponse]) -> None:
        _key, d = self.lookups.pop(0)
        d.callback(found)
        self.clock.advance(0)


def tiered() -> Tuple[Proxy, FakeTier]:
    proxy = Proxy()
    tier = proxy.cache.remote = FakeTier(proxy.clock)
    return proxy, tier


def shared(proxy: Proxy, body: bytes, headers: Any = (), lifetime: float = 60.0) -> CachedResponse:
    now = proxy.clock.seconds()
    vary = tuple(v for k, v in headers if k == b"vary")
    return CachedResponse(
        200, b"OK", list(headers), body, now, 0.0, lifetime, vary=vary, vary_key=(b"fr",) * len(vary)
    )


def test_a_local_miss_found_in_the_second_tier_is_a_hit_without_a_backend_request() -> None:
    proxy, tier = tiered()
    waiting = [proxy.request() for _ in range(3)]
    assert [key for key, _ in tier.lookups] == [b"http://example/x"]  # one lookup: the others wait
    tier.answer([shared(proxy, b"from redis")])
    assert results(waiting) == [(200, b"from redis", b"HIT")] + [(200, b"from redis", b"COALESCED")] * 2
    assert proxy.sent == []
    assert results([proxy.request()]) == [(200, b"from redis", b"HIT")]  # now in the first tier
    assert len(tier.lookups) == 0


def test_a_miss_in_both_tiers_goes_upstream_once_and_is_written_through() -> None:
    proxy, tier = tiered()
    proxy.upstream.answer(200, CACHEABLE, b"fetched")
    waiting = [proxy.request() for _ in range(2)]
    tier.answer([])
    assert results(waiting) == [(200, b"fetched", b"MISS"), (200, b"fetched", b"COALESCED")]
    assert proxy.sent == [b"/x"]
    [(key, entry, ttl)] = tier.stored
    assert (key, entry.body, ttl) == (b"http://example/x", b"fetched", 60_000)


def test_a_stale_shared_entry_is_revalidated_not_served() -> None:
    proxy, tier = tiered()
    proxy.upstream.answer(200, CACHEABLE, b"new")
    client = proxy.request()
    old = shared(proxy, b"old", [(b"etag", b'"1"')], lifetime=0.0)
    tier.answer([old])
    assert results([client]) == [(200, b"new", b"MISS")]
    assert get_first(proxy.upstream.requests[0].headers, b"if-none-match") == b'"1"'


def test_the_variant_the_request_selects_answers() -> None:
    proxy, tier = tiered()
    varying = [(b"vary", b"accept-language"), *CACHEABLE]
    proxy.upstream.answer(200, varying, b"hello")
    variant = shared(proxy, b"bonjour", varying)
    english = proxy.request(headers=[(b"accept-language", b"en")])
    tier.answer([variant])
    assert results([english]) == [(200, b"hello", b"MISS")]
    french = proxy.request(headers=[(b"accept-language", b"fr")])
    assert results([french]) == [(200, b"bonjour", b"HIT")]  # the variant joined the first tier
    assert tier.lookups == []


def test_a_client_gone_during_the_lookup_sends_nothing() -> None:
    proxy, tier = tiered()
    client = proxy.request()
    client.channel.connectionLost(Exception("gone"))
    tier.answer([])
    assert proxy.sent == [] and proxy.cache.flights == {}


# --- metrics ----------------------------------------------------------------------------------


def test_the_redis_figures_are_prometheus_families_only_with_redis() -> None:
    from powerlb.metrics import REDIS_COUNTERS, _redis_families

    figures = {"enabled": True, "up": False, **{field: n for n, (field, _) in enumerate(REDIS_COUNTERS)}}
    families = {family.name: family.samples[0].value for family in _redis_families(figures)}
    assert families == {
        "powerlb_redis_up": 0.0,
        **{f"powerlb_redis_{field}": n for n, (field, _) in enumerate(REDIS_COUNTERS)},
    }
    assert list(_redis_families({"enabled": False})) == []


# --- the cluster examples ---------------------------------------------------------------------


def test_the_cluster_examples_parse(monkeypatch: Any) -> None:
    import yaml

    examples = REPO / "examples"
    monkeypatch.setenv("REDIS_PASSWORD", "secret")
    node = config_from_mapping(yaml.safe_load((examples / "cluster-node.yaml").read_text()))
    edge = config_from_mapping(yaml.safe_load((examples / "cluster-edge.yaml").read_text()))
    assert (node.redis, node.redis_key_prefix, node.redis_password_env) == (
        "redis://10.0.0.5:6379/0",
        "shop:",
        "REDIS_PASSWORD",
    )
    assert (edge.algorithm, edge.hash_key, edge.cache_size, edge.redis) == (
        "consistent-hash",
        "host-uri",
        0,
        None,
    )
    assert [spec.url for spec in edge.backends] == [f"http://10.0.0.2{n}:8080" for n in (1, 2, 3)]
