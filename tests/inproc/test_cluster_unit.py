"""The cluster's plumbing without Redis: invalidations reach the shared tier and the bus, a
``--workers`` worker's bus forwards to its supervisor, and the supervisor is the instance on the
bus (publishes what its API and workers change, relays what it receives without publishing)."""

from __future__ import annotations

from typing import Any, List, Sequence, Tuple

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from powerlb.cache import CachedResponse
from powerlb.config import config_from_mapping
from powerlb.control import Change
from powerlb.redistier import (
    ClusterBus,
    ClusterControl,
    IRemoteStore,
    RedisStore,
    bus_message,
    read_bus_message,
)
from powerlb.values import RedisAddress
from powerlb.workers import WorkerSupervisor
from tests.support.caching import CACHEABLE, Proxy, results


@implementer(IRemoteStore)
class RecordingTier:
    """A second tier that misses and records the invalidations it is told of."""

    def __init__(self) -> None:
        self.invalidations: List[List[bytes]] = []

    def get(self, key: bytes) -> defer.Deferred:
        return defer.succeed([])

    def put(self, key: bytes, entry: CachedResponse, ttl: int) -> defer.Deferred:
        return defer.succeed(True)

    def purge(self, key: bytes, prefix: bool) -> defer.Deferred:
        return defer.succeed(None)

    def invalidated(self, keys: Sequence[bytes]) -> defer.Deferred:
        self.invalidations.append(list(keys))
        return defer.succeed(None)

    def stats(self) -> dict:
        return {}


def test_an_unsafe_request_invalidates_in_the_shared_tier_too_and_a_safe_one_does_not() -> None:
    proxy = Proxy()
    tier = proxy.cache.remote = RecordingTier()
    proxy.upstream.answer(200, CACHEABLE, b"page")
    assert results([proxy.request(b"/x")]) == [(200, b"page", b"MISS")]
    assert tier.invalidations == []
    proxy.upstream.answer(201, [(b"location", b"/x/1"), (b"content-location", b"/y")], b"made")
    assert results([proxy.request(b"/x", method=b"POST")])[0][0] == 201
    assert sorted(tier.invalidations[0]) == [b"http://example/x", b"http://example/x/1", b"http://example/y"]
    proxy.upstream.answer(500, [], b"failed")
    proxy.request(b"/z", method=b"DELETE")
    assert len(tier.invalidations) == 1  # an error response invalidates nothing


class Answering:
    """A connection that records each command and answers it at once (or fails it, ``down``)."""

    def __init__(self, down: bool = False) -> None:
        self.sent: List[Tuple[Any, ...]] = []
        self.down = down
        self.transport = StringTransport()

    def execute_command(self, *args: Any) -> defer.Deferred:
        self.sent.append(args)
        return defer.fail(ConnectionError("gone")) if self.down else defer.succeed(1)


def store_on(conn: Answering) -> RedisStore:
    store = RedisStore(RedisAddress("127.0.0.1", 6379, 0, False), b"p:", 0.05, Clock())
    store.link = type("Link", (), {"connection": conn})()
    store.up = True
    return store


def test_invalidated_keys_are_deleted_from_redis_and_published_as_purges() -> None:
    conn = Answering()
    store = store_on(conn)
    ClusterBus(store, control=None)  # type: ignore[arg-type]  # it announces the invalidations
    store.invalidated([b"http://h/a", b"http://h/b"])
    assert conn.sent[0] == ("DEL", b"p:c:http://h/a", b"p:c:http://h/b")
    published = [args for args in conn.sent if args[0] == "PUBLISH"]
    assert [args[1] for args in published] == [b"p:changes"] * 2
    assert [bus_change(args[2]).key for args in published] == [b"http://h/a", b"http://h/b"]
    assert store.invalidated([]).called and len(conn.sent) == 3


def bus_change(data: bytes) -> Change:
    return read_bus_message(data)[1]


def test_invalidations_are_announced_even_when_redis_fails() -> None:
    store = store_on(Answering(down=True))
    announced: List[Change] = []
    store.announce = announced.append
    store.invalidated([b"http://h/a"])
    assert announced == [Change("purge", key=b"http://h/a")] and store.stats()["errors"] == 1


def test_a_workers_bus_forwards_to_the_supervisor_and_does_not_subscribe() -> None:
    conn = Answering()
    bus = ClusterBus(store_on(conn), control=None)  # type: ignore[arg-type]
    forwarded: List[Change] = []
    bus.behind_supervisor(forwarded.append)
    bus.startService()
    bus.store.invalidated([b"http://h/a"])
    bus.publish(Change("purge", key=b"http://h/b", prefix=True))
    assert forwarded == [Change("purge", key=b"http://h/a"), Change("purge", key=b"http://h/b", prefix=True)]
    assert bus.link is None and [args[0] for args in conn.sent] == ["DEL"]


def supervisor() -> Tuple[WorkerSupervisor, Answering]:
    config = config_from_mapping(
        {"backends": ["http://127.0.0.1:9"], "workers": 2, "redis": "redis://127.0.0.1:9/0"}
    )
    supervisor = WorkerSupervisor(config, reactor)
    conn = Answering()
    assert supervisor.bus is not None
    supervisor.bus.store.link = type("Link", (), {"connection": conn})()
    return supervisor, conn


def test_the_supervisor_publishes_what_its_workers_forward_and_relays_what_it_receives() -> None:
    sup, conn = supervisor()
    assert isinstance(sup.bus, ClusterBus) and sup.bus.control is sup
    origin = type("Worker", (), {"index": 0, "pid": 1})()
    change = Change("purge", key=b"http://h/a")
    sup.relay(change, origin)  # type: ignore[arg-type]
    assert [read(args) for args in conn.sent] == [change]

    relayed: List[Change] = []
    sup.apply = lambda change: relayed.append(change) or defer.succeed({})  # type: ignore[method-assign]
    other = ClusterBus(store_on(Answering()), control=None)  # type: ignore[arg-type]
    drain = Change("set", backend="127.0.0.1:9", state="draining")
    sup.bus.message(bus_message(other.instance, drain))
    sup.bus.message(bus_message(sup.bus.instance, drain))  # its own: already applied
    assert relayed == [drain] and len(conn.sent) == 1  # not published again
    assert sup.stats()["redis"] == {"subscribed": False, "received": 1}


def read(args: Tuple[Any, ...]) -> Change:
    assert args[:2] == ("PUBLISH", b"powerlb:changes")
    return bus_change(args[2])


def test_the_supervisors_api_control_publishes_once_applied() -> None:
    sup, conn = supervisor()
    control = ClusterControl(sup, sup.bus)  # type: ignore[arg-type]
    sup.apply = lambda change: defer.succeed({"workers": []})  # type: ignore[method-assign]
    drain = Change("set", backend="127.0.0.1:9", state="draining")
    assert control.apply(drain).result == {"workers": []}
    assert [read(args) for args in conn.sent] == [drain]
