"""Many powerlb instances sharing one Redis (or Valkey): a second cache tier and a change bus.

Enabled with ``redis: redis://host:6379/0`` (``rediss://`` for TLS) and the
``powerlb[redis]`` extra (txredisapi, imported lazily: powerlb runs without it).

* :class:`RedisStore` is the shared second cache tier (:class:`IRemoteStore`).
  The in-process LRU stays the first tier: on a local miss the cache layer
  asks the store inside the request's coalescing flight, and every response
  it stores is written through. Entries travel in a versioned binary frame
  (:func:`frame`/:func:`unframe`), never pickle: whoever can write to the
  shared store must not be able to run code in powerlb. Each Redis TTL is the
  entry's remaining usable lifetime (:func:`remote_ttl`).
* :class:`ClusterBus` publishes this instance's admin changes and purges (the
  :class:`~powerlb.control.Change` JSON of the ``--workers`` pipes) on
  ``<prefix>changes`` and applies every other instance's through the same
  :class:`~powerlb.control.Control` as the runtime API; :class:`ClusterControl`
  is the API's control that does both. An unsafe request's invalidation
  (RFC 9111 section 4.4) deletes the shared copies and is published as a purge
  of each key (:meth:`RedisStore.invalidated`), so every instance drops its own.
* With ``--workers`` the main process (:class:`~powerlb.workers.WorkerSupervisor`)
  is the instance on the bus: it publishes the changes made through its API and
  the purges and invalidations its workers forward, and relays every other
  instance's change to all its workers, without publishing it again. Each worker
  keeps its own connection for the cache tier but neither subscribes nor
  publishes (:meth:`ClusterBus.behind_supervisor`).
* With ``redis-sentinel``, every connection and reconnection first asks the
  Sentinels where the master is (:func:`ask_sentinels`), so a failover is
  followed: Sentinel closes the clients of a demoted master, and they come
  back to the new one.
* Redis slow or down fails open: a lookup that takes longer than
  ``redis-timeout`` is a miss, a store is dropped, purges still apply here,
  connections come back with exponential backoff and the subscription is
  made again; :meth:`RedisStore.stats` counts all of it for the stats, the
  metrics and the dashboard.
"""

from __future__ import annotations

import functools
import importlib
import json
import math
import struct
import uuid
from typing import Any, Callable, Dict, Generator, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet import defer, protocol, tcp
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from powerlb.cache import CachedResponse
from powerlb.cachepolicy import Rules, VaryKey
from powerlb.control import BackendControl, Change, Control, LocalControl, ProtocolError, change_from_json
from powerlb.settings import Config
from powerlb.values import RedisAddress, read_password, redis_address

log = Logger()

# --- entry frames ----------------------------------------------------------------------------

#: The first bytes of every frame: a magic and the format version (a frame of another version
#: is refused, as an unknown entry: a miss).
FRAME_MAGIC = b"PLB"
FRAME_VERSION = 1

_HEAD = struct.Struct(">3sBHB5d")
_LENGTH = struct.Struct(">I")
_NO_CACHE, _MUST_REVALIDATE = 1, 2


class FrameError(ValueError):
    """Bytes that are not an entry frame of this version."""


def frame(entry: CachedResponse) -> bytes:
    """``entry`` as bytes: magic, version, status, rule flags, its five times, then
    length-prefixed reason, headers, Vary names, secondary key (absent values marked) and body."""
    rules = entry.rules
    flags = (_NO_CACHE if rules.no_cache else 0) | (_MUST_REVALIDATE if rules.must_revalidate else 0)
    parts = [
        _HEAD.pack(
            FRAME_MAGIC,
            FRAME_VERSION,
            entry.status,
            flags,
            entry.response_time,
            entry.initial_age,
            entry.freshness_lifetime,
            rules.stale_while_revalidate,
            rules.stale_if_error,
        ),
        _blob(entry.reason),
        _LENGTH.pack(len(entry.headers)),
    ]
    for name, value in entry.headers:
        parts += (_blob(name), _blob(value))
    parts.append(_LENGTH.pack(len(entry.vary)))
    parts += [_blob(name) for name in entry.vary]
    parts.append(vary_field(entry.vary_key))
    parts.append(_blob(entry.body))
    return b"".join(parts)


def vary_field(vary_key: VaryKey) -> bytes:
    """A secondary key as bytes (count, then each value; an absent one marked apart from b"")."""
    parts = [_LENGTH.pack(len(vary_key))]
    for value in vary_key:
        parts.append(b"\x00" if value is None else b"\x01" + _blob(value))
    return b"".join(parts)


def _blob(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


class _Reader:
    """Reads a frame front to back; every overrun is a FrameError."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def unpack(self, shape: struct.Struct) -> Tuple[Any, ...]:
        if self.at + shape.size > len(self.data):
            raise FrameError("truncated frame")
        values = shape.unpack_from(self.data, self.at)
        self.at += shape.size
        return values

    def count(self) -> int:
        count: int
        (count,) = self.unpack(_LENGTH)
        # every item takes at least one byte (its length or marker): a larger count is a lie
        if count > len(self.data) - self.at:
            raise FrameError("a count larger than the frame")
        return count

    def blob(self) -> bytes:
        (length,) = self.unpack(_LENGTH)
        end = self.at + length
        if end > len(self.data):
            raise FrameError("truncated frame")
        value, self.at = self.data[self.at : end], end
        return value

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise FrameError("truncated frame")
        self.at += 1
        return self.data[self.at - 1]


def unframe(data: bytes) -> CachedResponse:
    """The entry :func:`frame` made; FrameError for anything else (never another exception)."""
    if not isinstance(data, bytes):
        raise FrameError(f"a frame is bytes, not {type(data).__name__}")
    reader = _Reader(data)
    magic, version, status, flags, *times = reader.unpack(_HEAD)
    if magic != FRAME_MAGIC:
        raise FrameError("not an entry frame")
    if version != FRAME_VERSION:
        raise FrameError(f"frame version {version}, not {FRAME_VERSION}")
    if not 100 <= status <= 999 or flags & ~(_NO_CACHE | _MUST_REVALIDATE):
        raise FrameError("a bad status or flags")
    if not all(math.isfinite(t) and t >= 0 for t in times):
        raise FrameError("a time that is negative or not finite")
    response_time, initial_age, freshness_lifetime, swr, sie = times
    reason = reader.blob()
    headers = [(reader.blob(), reader.blob()) for _ in range(reader.count())]
    vary = tuple(reader.blob() for _ in range(reader.count()))
    vary_key: List[Optional[bytes]] = []
    for _ in range(reader.count()):
        marker = reader.byte()
        if marker not in (0, 1):
            raise FrameError("a bad secondary key value")
        vary_key.append(reader.blob() if marker else None)
    if len(vary_key) != len(vary):
        raise FrameError("a secondary key that does not match the Vary names")
    body = reader.blob()
    if reader.at != len(data):
        raise FrameError("bytes after the frame")
    rules = Rules(bool(flags & _NO_CACHE), bool(flags & _MUST_REVALIDATE), swr, sie)
    return CachedResponse(
        status,
        reason,
        headers,
        body,
        response_time,
        initial_age,
        freshness_lifetime,
        vary,
        tuple(vary_key),
        rules,
    )


# --- the store -------------------------------------------------------------------------------


class IRemoteStore(Interface):
    """A cache tier shared by instances, behind the in-process one. Never fails: trouble is a
    miss, a dropped store or nothing purged, counted in :meth:`stats`."""

    def get(key: bytes) -> defer.Deferred[List[CachedResponse]]:
        """Fires with the stored variants of ``key`` (a list of CachedResponse, maybe empty)."""

    def put(key: bytes, entry: CachedResponse, ttl: int) -> defer.Deferred[bool]:
        """Store ``entry`` (a variant of ``key``) for ``ttl`` milliseconds; fires with whether it was."""

    def purge(key: bytes, prefix: bool) -> defer.Deferred[None]:
        """Remove every variant of ``key`` (or of every key starting with it); fires when done."""

    def invalidated(keys: Sequence[bytes]) -> defer.Deferred[None]:
        """Drop the shared copies of ``keys`` (an unsafe request invalidated them here) and tell
        the other instances; fires when done."""

    def stats() -> Dict[str, Any]:
        """Figures: enabled, up, hits, misses, timeouts, errors, reconnects, stores, dropped, purges."""


#: Puts one variant in a key's hash: the whole hash goes when its Vary names changed, and its
#: TTL only ever grows (every variant lives at least as long as its own TTL).
_PUT_SCRIPT = """
local vary = redis.call('HGET', KEYS[1], 'v')
if vary and vary ~= ARGV[1] then redis.call('DEL', KEYS[1]) end
local left = redis.call('PTTL', KEYS[1])
redis.call('HSET', KEYS[1], 'v', ARGV[1], ARGV[2], ARGV[3])
if left < tonumber(ARGV[4]) then redis.call('PEXPIRE', KEYS[1], ARGV[4]) end
return 1
"""

#: Removes the keys matching a pattern, a SCAN batch at a time; returns the cursor and the count.
_PURGE_SCRIPT = """
local found = redis.call('SCAN', ARGV[1], 'MATCH', ARGV[2], 'COUNT', 500)
if #found[2] > 0 then redis.call('DEL', unpack(found[2])) end
return {found[1], #found[2]}
"""

_GLOB_SPECIAL = frozenset(b"*?[]\\")

#: Seconds between reconnection attempts: the first, and the most (doubling in between).
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 10


def glob_escape(data: bytes) -> bytes:
    """``data`` as a Redis MATCH pattern matching only itself."""
    return b"".join(b"\\" + bytes([c]) if c in _GLOB_SPECIAL else bytes([c]) for c in data)


#: Timeouts in a row after which the connection is dropped and made again: a hung Redis then
#: costs misses at once (until it answers again) rather than redis-timeout a request, and the
#: replies it owes are forgotten.
TIMEOUTS_TO_RECONNECT = 5


class RedisTimeout(Exception):
    """Redis did not answer within redis-timeout."""


#: Where the master is now: a Deferred firing with ``(host, port)`` (see :func:`ask_sentinels`).
Locate = Callable[[], "defer.Deferred[Tuple[str, int]]"]

#: Seconds each Redis Sentinel gets to connect, and then to answer.
SENTINEL_TIMEOUT = 1.0


@defer.inlineCallbacks
def ask_sentinels(
    reactor: Any, sentinels: Sequence[Tuple[str, int]], master: str
) -> Generator[Any, Any, Tuple[str, int]]:
    """Where the Sentinels say ``master`` is, asking one after the other until one knows;
    fails with LookupError (after logging each one's trouble) when none does."""
    redis = _txredisapi()
    for host, port in sentinels:
        try:
            endpoint = HostnameEndpoint(reactor, host, port, timeout=SENTINEL_TIMEOUT)
            conn = yield connectProtocol(endpoint, redis.RedisProtocol(charset=None, convertNumbers=False))
            try:
                asked = conn.execute_command("SENTINEL", "get-master-addr-by-name", master)
                answer = yield asked.addTimeout(SENTINEL_TIMEOUT, reactor)
            finally:
                conn.transport.loseConnection()
        except Exception as exc:
            log.warn("redis: sentinel {host}:{port}: {err}", host=host, port=port, err=exc)
            continue
        if isinstance(answer, list) and len(answer) == 2:
            return answer[0].decode(), int(answer[1])
        log.warn(
            "redis: sentinel {host}:{port} knows no master {master}", host=host, port=port, master=master
        )
    raise LookupError(f"no Redis Sentinel knows where master {master!r} is")


class _Relocating:
    """A connector that asks where the master is (``link.locate``) before each connection
    attempt; when nobody knows, the link tries again after its backoff."""

    def __init__(self, connector: Any, link: _Link) -> None:
        self.connector = connector
        self.link = link

    def connect(self) -> None:
        assert self.link.locate is not None

        def found(address: Tuple[str, int]) -> None:
            if self.link.continueTrying:
                self.connector.host, self.connector.port = address
                self.connector.connect()

        def unknown(failure: Failure) -> None:
            log.warn("redis: {err}", err=failure.getErrorMessage())
            if self.link.continueTrying:
                self.link.retry(self.connector)

        self.link.locate().addCallbacks(found, unknown)


class _Link(protocol.ReconnectingClientFactory):
    """One reconnecting Redis connection (a txredisapi protocol) with exponential backoff;
    ``on_connect`` gets each connection once it is ready (authenticated, database selected),
    ``on_lost`` hears when it goes. With ``locate``, each attempt first asks where to connect."""

    initialDelay = RECONNECT_FIRST
    maxDelay = RECONNECT_MAX
    # what txredisapi's protocol reads from its factory
    isLazy = True

    def __init__(
        self,
        protocol_class: Any,
        db: int,
        password: Optional[str],
        on_connect: Callable[[Any], None],
        on_lost: Callable[[], None],
        locate: Optional[Locate] = None,
    ) -> None:
        self.locate = locate
        self.protocol_class = protocol_class
        self.db = db
        self.password = password
        self.on_connect = on_connect
        self.on_lost = on_lost
        self.connection: Any = None

    def buildProtocol(self, addr: Any) -> Any:
        conn = self.protocol_class(charset=None, password=self.password, dbid=self.db, convertNumbers=False)
        conn.factory = self
        conn.whenConnected().addCallback(self._ready)
        conn.whenDisconnected().addCallback(self._gone)
        return conn

    def _ready(self, conn: Any) -> None:
        self.resetDelay()
        self.connection = conn
        self.on_connect(conn)

    def _gone(self, conn: Any) -> None:
        if self.connection is conn:
            self.connection = None
            self.on_lost()

    def connectionError(self, why: str) -> None:
        log.warn("redis: {why}", why=why)

    def retry(self, connector: Any = None) -> None:
        if self.locate is not None:  # ask again where the master is, when it is time to connect
            connector = _Relocating(connector or self.connector, self)
        super().retry(connector)


@implementer(IRemoteStore)
class RedisStore(Service):
    """The shared second cache tier in Redis (:class:`IRemoteStore`), and the connection the
    :class:`ClusterBus` publishes on.

    Each primary key is a hash ``<prefix>c:<key>``: field ``v`` holds the Vary names, one field
    per variant (its :func:`vary_field`) its :func:`frame`. Every command gets ``timeout``
    seconds (on ``clock``); a late answer is a miss and a late store is dropped.
    """

    def __init__(
        self,
        address: RedisAddress,
        prefix: bytes,
        timeout: float,
        clock: IReactorTime,
        password: Optional[str] = None,
        sentinels: Optional[Sequence[Tuple[str, int]]] = None,
        master: str = "",
    ) -> None:
        self.address = address
        #: Where the master is, with Sentinels (then ``address`` gives only the database).
        self.locate: Optional[Locate] = None
        if sentinels:
            self.locate = functools.partial(ask_sentinels, clock, sentinels, master)
        self.prefix = prefix
        self.timeout = timeout
        self.clock = clock
        self.password = password
        self.figures = dict.fromkeys(
            ("hits", "misses", "timeouts", "errors", "reconnects", "stores", "dropped", "purges"), 0
        )
        self.up = False
        self.connects = 0
        #: Commands timed out in a row.
        self.late = 0
        self.link: Optional[_Link] = None
        #: Where the keys an unsafe request invalidated are announced as purges (the bus's
        #: :meth:`ClusterBus.publish`, set by the bus); None: nowhere.
        self.announce: Optional[Callable[[Change], Any]] = None

    # -- the connection ------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self.link = connect_link(
            self.address, self.password, self.clock, self._connected, self._lost, locate=self.locate
        )

    def stopService(self) -> None:
        super().stopService()
        stop_link(self.link)
        self.link = None
        self.up = False

    def _connected(self, conn: Any) -> None:
        self.up = True
        self.connects += 1
        if self.connects > 1:
            self.figures["reconnects"] += 1
            log.info(
                "redis: connected again to {host}:{port}", host=self.address.host, port=self.address.port
            )

    def _lost(self) -> None:
        if self.up:
            log.warn(
                "redis: connection to {host}:{port} lost", host=self.address.host, port=self.address.port
            )
        self.up = False

    def command(self, name: str, *args: Any) -> defer.Deferred[Any]:
        """Run one command within the timeout; fails with RedisTimeout or the error (also when down)."""
        conn = None if self.link is None else self.link.connection
        if conn is None:
            return defer.fail(ConnectionError("redis is down"))
        d = defer.maybeDeferred(conn.execute_command, name, *args)
        d.addTimeout(self.timeout, self.clock, onTimeoutCancel=_timed_out)
        return d.addBoth(self._count_late, conn)

    def _count_late(self, result: Any, conn: Any) -> Any:
        """After :data:`TIMEOUTS_TO_RECONNECT` timeouts in a row, drop the connection (``conn``)."""
        if not (isinstance(result, Failure) and result.check(RedisTimeout)):
            self.late = 0
            return result
        self.late += 1
        if self.late >= TIMEOUTS_TO_RECONNECT and self.link is not None and self.link.connection is conn:
            log.warn("redis: {n} timeouts in a row; connecting again", n=self.late)
            self.late = 0
            conn.transport.abortConnection()
        return result

    def trouble(self, failure: Any, what: str) -> None:
        """Count (and log, while up) a command that timed out or failed."""
        if failure.check(RedisTimeout):
            self.figures["timeouts"] += 1
        else:
            self.figures["errors"] += 1
            if self.up:
                log.warn("redis {what}: {err}", what=what, err=failure.getErrorMessage())

    # -- IRemoteStore --------------------------------------------------

    def get(self, key: bytes) -> defer.Deferred[List[CachedResponse]]:
        """The variants stored for ``key``; none (a miss) on any trouble."""

        def found(fields: Any) -> List[CachedResponse]:
            entries = []
            values = dict(zip(fields[::2], fields[1::2])) if isinstance(fields, list) else fields or {}
            for field, data in values.items():
                if field == b"v":
                    continue
                try:
                    entries.append(unframe(data))
                except FrameError as err:
                    self.figures["errors"] += 1
                    log.warn("redis: a bad entry for {key!r}: {err}", key=key, err=err)
            self.figures["hits" if entries else "misses"] += 1
            return entries

        def failed(failure: Any) -> List[CachedResponse]:
            self.trouble(failure, "lookup")
            self.figures["misses"] += 1
            return []

        return self.command("HGETALL", self.prefix + b"c:" + key).addCallbacks(found, failed)

    def put(self, key: bytes, entry: CachedResponse, ttl: int) -> defer.Deferred[bool]:
        """Write ``entry`` through (the cache layer passes only what its own tier took, so within
        ``cache-max-object``); dropped (False) when already expired or Redis has trouble."""
        if ttl <= 0:
            return defer.succeed(False)
        data = frame(entry)
        d = self.command(
            "EVAL",
            _PUT_SCRIPT,
            1,
            self.prefix + b"c:" + key,
            b"\0".join(entry.vary),
            vary_field(entry.vary_key),
            data,
            ttl,
        )

        def stored(_: Any) -> bool:
            self.figures["stores"] += 1
            return True

        def dropped(failure: Any) -> bool:
            self.trouble(failure, "store")
            self.figures["dropped"] += 1
            return False

        return d.addCallbacks(stored, dropped)

    @defer.inlineCallbacks
    def purge(self, key: bytes, prefix: bool) -> Any:
        """Delete ``key``'s hash, or every hash of a key starting with it (SCAN in batches)."""
        name = self.prefix + b"c:" + key
        try:
            if not prefix:
                yield self.command("DEL", name)
            else:
                cursor = b"0"
                while True:
                    cursor, _ = yield self.command("EVAL", _PURGE_SCRIPT, 0, cursor, glob_escape(name) + b"*")
                    if cursor in (b"0", 0):
                        break
            self.figures["purges"] += 1
        except Exception:  # fail open: the purge still applies to every local tier
            self.trouble(Failure(), "purge")

    def invalidated(self, keys: Sequence[bytes]) -> defer.Deferred[None]:
        """The cache layer's hook for ``keys`` an unsafe request invalidated here: delete their
        shared copies, then announce each as a purge (:attr:`announce`), so the other instances
        drop theirs. Fails open: on trouble the announcement still goes out."""
        if not keys:
            return defer.succeed(None)
        d = self.command("DEL", *[self.prefix + b"c:" + key for key in keys])

        def announced(result: Any) -> None:
            if isinstance(result, Failure):
                self.trouble(result, "invalidation")
            if self.announce is not None:
                for key in keys:
                    self.announce(Change("purge", key=key))

        return d.addBoth(announced)

    def stats(self) -> Dict[str, Any]:
        return {"enabled": True, "up": self.up, **self.figures}


def _timed_out(result: Any, timeout: float) -> Any:
    raise RedisTimeout(f"no answer from redis within {timeout:g} s")


def _txredisapi() -> Any:
    """The txredisapi module (untyped, so Any); ImportError naming the extra when it is missing."""
    try:
        return importlib.import_module("txredisapi")
    except ImportError:
        raise ImportError("redis needs txredisapi: pip install 'powerlb[redis]'") from None


def connect_link(
    address: RedisAddress,
    password: Optional[str],
    reactor: Any,
    on_connect: Callable[[Any], None],
    on_lost: Callable[[], None],
    protocol_class: Any = None,
    locate: Optional[Locate] = None,
) -> _Link:
    """Start a reconnecting connection to ``address`` (txredisapi's ``RedisProtocol`` unless
    ``protocol_class``), or to where ``locate`` says each time; ImportError naming the extra when
    txredisapi is missing."""
    link = _Link(
        protocol_class or _txredisapi().RedisProtocol, address.db, password, on_connect, on_lost, locate
    )
    link.clock = reactor
    if locate is not None:  # plain TCP (config.py refuses rediss:// with Sentinels)
        _Relocating(tcp.Connector(address.host, address.port, link, 30, None, reactor), link).connect()
    elif address.tls:
        from twisted.internet import ssl

        reactor.connectSSL(address.host, address.port, link, ssl.optionsForClientTLS(address.host))
    else:
        reactor.connectTCP(address.host, address.port, link)
    return link


def stop_link(link: Optional[_Link]) -> None:
    """Stop reconnecting and close the connection."""
    if link is None:
        return
    link.stopTrying()
    if link.connection is not None:
        link.connection.transport.loseConnection()


# --- the change bus --------------------------------------------------------------------------


def bus_message(instance: str, change: Change) -> bytes:
    """What goes on the channel: the sender's id and the change as the workers' pipes carry it."""
    return json.dumps({"from": instance, "change": change.to_json()}, separators=(",", ":")).encode()


def read_bus_message(data: bytes) -> Tuple[str, Change]:
    """``(sender id, change)`` from a channel message; ProtocolError for anything else."""
    try:
        body = json.loads(data)
    except ValueError as exc:
        raise ProtocolError(f"not JSON ({exc})") from None
    if not isinstance(body, dict) or not isinstance(body.get("from"), str):
        raise ProtocolError("a bus message is a JSON object with a sender id")
    return body["from"], change_from_json(body.get("change"))


class ClusterBus(Service):
    """Applies the changes other instances publish on ``<prefix>changes`` through ``control`` (as
    the runtime API does), and publishes this instance's (:meth:`publish`); subscribes again,
    with backoff, whenever the connection comes back. It announces the ``store``'s
    invalidations (:meth:`RedisStore.invalidated`)."""

    def __init__(self, store: RedisStore, control: Control) -> None:
        self.store = store
        self.control = control
        self.instance = uuid.uuid4().hex
        self.channel = store.prefix + b"changes"
        self.link: Optional[_Link] = None
        self.received = 0
        self.subscribed = False
        #: Set in a ``--workers`` worker: where its changes go instead (to the supervisor).
        self.forward: Optional[Callable[[Change], None]] = None
        store.announce = self.publish

    def behind_supervisor(self, forward: Callable[[Change], None]) -> None:
        """Make this the bus of a ``--workers`` worker (before it starts): ``forward`` hands its
        changes (purges, invalidations) to the supervisor, which relays them to the other workers
        and publishes them; it does not subscribe, as the supervisor relays the other instances'
        changes to every worker."""
        self.forward = forward

    def startService(self) -> None:
        super().startService()
        if self.forward is not None:
            return
        bus = self

        def received(protocol: Any, pattern: Any, channel: Any, message: Any) -> None:
            bus.message(message)

        subscriber = type("Subscriber", (_txredisapi().SubscriberProtocol,), {"messageReceived": received})
        self.link = connect_link(
            self.store.address,
            self.store.password,
            self.store.clock,
            self._connected,
            self._lost,
            subscriber,
            self.store.locate,
        )

    def stopService(self) -> None:
        super().stopService()
        stop_link(self.link)
        self.link = None

    def _connected(self, conn: Any) -> None:
        def done(_: Any) -> None:
            self.subscribed = True

        conn.subscribe([self.channel]).addCallbacks(done, lambda f: self.store.trouble(f, "subscribe"))

    def _lost(self) -> None:
        self.subscribed = False

    def message(self, data: Any) -> None:
        """One message from the channel: applied unless it is this instance's own."""
        try:
            sender, change = read_bus_message(data)
        except ProtocolError as err:
            log.warn("redis: an unreadable change on the bus: {err}", err=err)
            return
        if sender == self.instance:
            return
        self.received += 1
        self.control.apply(change).addErrback(
            lambda f: log.warn("redis: a change from another instance does not apply: {err}", err=f.value)
        )

    def stats(self) -> Dict[str, Any]:
        """The tier's figures and the bus's: subscribed, changes received from other instances."""
        return {**self.store.stats(), "subscribed": self.subscribed, "received": self.received}

    def publish(self, change: Change) -> defer.Deferred[Any]:
        """Send ``change`` to the other instances (dropped, and counted, when Redis has trouble);
        in a worker, to the supervisor (:meth:`behind_supervisor`)."""
        if self.forward is not None:
            self.forward(change)
            return defer.succeed(None)
        return self.store.command("PUBLISH", self.channel, bus_message(self.instance, change)).addErrback(
            self.store.trouble, "publish"
        )


class ClusterControl:
    """The runtime API's control with a cluster: applies a change here (``local``) and, once it
    applied, publishes it to the other instances; a purge deletes the shared entries first, so no
    instance refills from them."""

    def __init__(self, local: Control, bus: ClusterBus) -> None:
        self.local = local
        self.bus = bus
        self.caching = local.caching

    def apply(self, change: Change) -> defer.Deferred[Dict[str, Any]]:
        first = defer.succeed(None)
        if change.op == "purge" and self.local.caching:
            first = self.bus.store.purge(change.key, change.prefix)

        def published(result: Any) -> Any:
            self.bus.publish(change)
            return result

        return first.addCallback(lambda _: self.local.apply(change)).addCallback(published)


def store_for(config: Config, reactor: Any) -> RedisStore:
    """The (not yet started) Redis connection ``config.redis`` and the other redis-* settings name."""
    return RedisStore(
        redis_address(config.redis or ""),
        config.redis_key_prefix.encode(),
        config.redis_timeout,
        reactor,
        read_password(config.redis_password_env, config.redis_password_file),
        config.redis_sentinel,
        config.redis_sentinel_master or "",
    )


def cluster_for(
    config: Config, target: BackendControl, cache_layer: Any, reactor: Any
) -> Tuple[RedisStore, ClusterBus, ClusterControl]:
    """The Redis tier, the bus and the API's control of one instance (``target``, its cache layer
    or None) for ``config.redis``. ``PURGE`` requests the cache layer serves are made cluster-wide
    too; the changes received from the bus apply through the original purge (the bus's
    ``control``), so go no further."""
    store = store_for(config, reactor)
    local = LocalControl(target, None if cache_layer is None else cache_layer.purge)
    bus = ClusterBus(store, local)
    if cache_layer is not None:
        cache_layer.remote = store
        purge_here: Callable[[bytes, bool], int] = cache_layer.purge

        def purge(key: bytes, prefix: bool = False) -> int:
            removed = purge_here(key, prefix)
            store.purge(key, prefix).addCallback(
                lambda _: bus.publish(Change("purge", key=key, prefix=prefix))
            )
            return removed

        cache_layer.purge = purge
    return store, bus, ClusterControl(local, bus)
