"""The response cache: stored responses, a byte-bounded LRU store and its periodic sweeper.

What to store and for how long is decided by :mod:`powerlb.cachepolicy`; this
module only keeps entries. Time comes from an injected ``IReactorTime``.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import OrderedDict
from typing import Dict, Iterable, List, Optional, Set, Tuple

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from zope.interface import Interface, implementer

from powerlb.cachepolicy import Rules, StorePlan, VaryKey, current_age, has_validator, vary_values
from powerlb.headers import Headers, strip_hop_by_hop

#: Bytes accounted per entry on top of its body and headers: a rough figure for
#: the objects and dict slots that hold it, so many tiny entries still add up.
ENTRY_OVERHEAD = 256

MiB = 1024 * 1024

_NO_RULES = Rules()

#: Seconds a stale response with a validator is kept at least, to be revalidated (RFC 9111
#: section 4.3): a 304 then refreshes it without sending the body again.
KEEP_FOR_REVALIDATION = 600.0


class CachedResponse:
    """A stored response with the times needed for its age and freshness (RFC 9111 section 4.2).

    ``headers`` are the stored response headers (lower-cased names, no ``Age``
    and no hop-by-hop fields); ``vary`` are the response's Vary names and
    ``vary_key`` the request values for them (the secondary key); ``rules``
    what its directives say about reusing it. Treat an
    instance as immutable once stored: an update is a new instance put in
    its place.
    """

    __slots__ = (
        "body",
        "freshness_lifetime",
        "headers",
        "initial_age",
        "reason",
        "response_time",
        "rules",
        "status",
        "vary",
        "vary_key",
    )

    def __init__(
        self,
        status: int,
        reason: bytes,
        headers: Headers,
        body: bytes,
        response_time: float,
        initial_age: float,
        freshness_lifetime: float,
        vary: Tuple[bytes, ...] = (),
        vary_key: VaryKey = (),
        rules: Rules = _NO_RULES,
    ) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body
        self.response_time = response_time
        self.initial_age = initial_age
        self.freshness_lifetime = freshness_lifetime
        self.vary = vary
        self.vary_key = vary_key
        self.rules = rules

    @classmethod
    def from_plan(
        cls,
        plan: StorePlan,
        status: int,
        reason: bytes,
        response_headers: Headers,
        body: bytes,
        request_headers: Headers,
    ) -> CachedResponse:
        """The entry to store for a response that ``plan_store`` accepted with ``plan``."""
        headers = [(k, v) for k, v in strip_hop_by_hop(response_headers) if k != b"age"]
        return cls(
            status=status,
            reason=reason,
            headers=headers,
            body=body,
            response_time=plan.response_time,
            initial_age=plan.initial_age,
            freshness_lifetime=plan.freshness_lifetime,
            vary=plan.vary,
            vary_key=vary_values(plan.vary, request_headers),
            rules=plan.rules,
        )

    def __repr__(self) -> str:
        return (
            f"<CachedResponse {self.status} {len(self.body)}B"
            f" lifetime={self.freshness_lifetime} vary_key={self.vary_key!r}>"
        )

    @property
    def size(self) -> int:
        """Bytes accounted for this entry: body, reason, header names and values, overhead."""
        header_bytes = sum(len(k) + len(v) for k, v in self.headers)
        return len(self.body) + len(self.reason) + header_bytes + ENTRY_OVERHEAD

    @property
    def expires_at(self) -> float:
        """When the entry stops being fresh (its age reaches its freshness lifetime)."""
        return self.response_time - self.initial_age + self.freshness_lifetime

    def age(self, now: float) -> float:
        """The current age at ``now`` (RFC 9111 section 4.2.3)."""
        return current_age(self.initial_age, self.response_time, now)

    def is_fresh(self, now: float) -> bool:
        """Whether the entry is fresh at ``now`` (RFC 9111 section 4.2)."""
        return self.freshness_lifetime > self.age(now)

    def drop_at(self, keep_stale: float) -> float:
        """When to forget the entry: ``keep_stale`` seconds after it turns stale, or later when its
        ``stale-while-revalidate`` or ``stale-if-error`` window is longer (RFC 5861), or when it has
        a validator (:data:`KEEP_FOR_REVALIDATION`)."""
        rules = self.rules
        keep = max(keep_stale, rules.stale_while_revalidate, rules.stale_if_error)
        if has_validator(self.headers):
            keep = max(keep, KEEP_FOR_REVALIDATION)
        return self.expires_at + keep


def remote_ttl(entry: CachedResponse, keep_stale: float, now: float) -> int:
    """Milliseconds the shared store keeps ``entry``: its remaining usable lifetime, fresh or stale
    (its stale-while-revalidate and stale-if-error windows, grace, revalidation; see
    :meth:`CachedResponse.drop_at`), rounded up; 0 or less when it is not worth storing."""
    return math.ceil((entry.drop_at(keep_stale) - now) * 1000)


class ICacheStore(Interface):
    """Storage of cached responses by primary key, with their Vary variants."""

    def get(key: bytes, request_headers: Headers) -> Optional[CachedResponse]:
        """The stored variant of ``key`` matching ``request_headers``, fresh or stale.

        Entries past their drop time are removed and not returned.
        """

    def put(key: bytes, response: CachedResponse) -> bool:
        """Store ``response`` under ``key``, replacing the same variant.

        Returns False, storing nothing, when it is over the object size limit
        or already past its drop time.
        """

    def remove(key: bytes) -> int:
        """Remove every variant of ``key``; return how many were removed."""

    def keys() -> Iterable[bytes]:
        """The primary keys stored (a snapshot: removing while iterating is safe)."""

    def sweep() -> int:
        """Remove the entries past their drop time; return how many."""

    def stats() -> Dict[str, int]:
        """Figures: entries, bytes, max_bytes, max_object, stores, evictions, expired."""


class _Slot:
    """A stored entry with the size it was accounted at and its drop time."""

    __slots__ = ("drop_at", "response", "size")

    def __init__(self, response: CachedResponse, size: int, drop_at: float) -> None:
        self.response = response
        self.size = size
        self.drop_at = drop_at


class _Variants:
    """The Vary names shared by a primary key's variants, and their secondary keys."""

    __slots__ = ("vary", "vary_keys")

    def __init__(self, vary: Tuple[bytes, ...]) -> None:
        self.vary = vary
        self.vary_keys: Set[VaryKey] = set()


@implementer(ICacheStore)
class LRUCache:
    """An in-memory ICacheStore bounded by total bytes, evicting least recently used entries.

    The sum of entry sizes never exceeds ``max_bytes``; a response bigger
    than ``max_object`` is not stored. A get hit makes the entry the most
    recently used. An entry is dropped at its :meth:`CachedResponse.drop_at`
    (``keep_stale`` keeps stale entries around for revalidation or
    stale-if-error) — lazily by :meth:`get`, or by :meth:`sweep`.

    Entries live in an OrderedDict keyed by ``(primary key, vary_key)`` (LRU
    order) with a per-primary-key index of variants, so get, put and remove of
    one variant are O(1) (put adds an O(log n) heap push). All variants of a
    key share its Vary names: a response whose Vary names differ replaces
    every stored variant of the key (the origin changed how it varies, and
    RFC 9111 section 4.1 prefers the most recent response). Drop times sit in
    a min-heap, so :meth:`sweep` costs O(k log n) for k dropped entries; heap
    items of replaced or removed entries are skipped when popped, and the heap
    is rebuilt once it holds more than twice the live entries.

    Only ever touched from the reactor thread: no locks.
    """

    def __init__(
        self,
        max_bytes: int = 64 * MiB,
        max_object: int = 1 * MiB,
        *,
        clock: IReactorTime,
        keep_stale: float = 0.0,
    ) -> None:
        if max_bytes < 0 or max_object < 0 or keep_stale < 0:
            raise ValueError("max_bytes, max_object and keep_stale must not be negative")
        self._max_bytes = max_bytes
        self._max_object = max_object
        self._clock = clock
        self._keep_stale = keep_stale
        self._entries: OrderedDict[Tuple[bytes, VaryKey], _Slot] = OrderedDict()
        self._index: Dict[bytes, _Variants] = {}
        self._heap: List[Tuple[float, int, bytes, VaryKey]] = []
        self._sequence = itertools.count()
        self._bytes = 0
        self._stores = 0
        self._evictions = 0
        self._expired = 0

    def get(self, key: bytes, request_headers: Headers) -> Optional[CachedResponse]:
        variants = self._index.get(key)
        if variants is None:
            return None
        entry_key = (key, vary_values(variants.vary, request_headers) if variants.vary else ())
        slot = self._entries.get(entry_key)
        if slot is None:
            return None
        if slot.drop_at <= self._clock.seconds():
            self._discard(entry_key)
            self._expired += 1
            return None
        self._entries.move_to_end(entry_key)
        return slot.response

    def put(self, key: bytes, response: CachedResponse) -> bool:
        size = response.size
        drop_at = response.drop_at(self._keep_stale)
        if size > self._max_object or size > self._max_bytes:
            return False
        if drop_at <= self._clock.seconds():
            return False
        variants = self._index.get(key)
        if variants is not None and variants.vary != response.vary:
            self.remove(key)
        entry_key = (key, response.vary_key)
        if entry_key in self._entries:
            self._discard(entry_key)
        while self._bytes + size > self._max_bytes:
            self._discard(next(iter(self._entries)))
            self._evictions += 1
        self._entries[entry_key] = _Slot(response, size, drop_at)
        self._bytes += size
        self._index.setdefault(key, _Variants(response.vary)).vary_keys.add(response.vary_key)
        heapq.heappush(self._heap, (drop_at, next(self._sequence), key, response.vary_key))
        if len(self._heap) > 2 * len(self._entries) + 64:
            self._rebuild_heap()
        self._stores += 1
        return True

    def remove(self, key: bytes) -> int:
        variants = self._index.get(key)
        if variants is None:
            return 0
        count = len(variants.vary_keys)
        for vary_key in list(variants.vary_keys):
            self._discard((key, vary_key))
        return count

    def keys(self) -> Iterable[bytes]:
        return list(self._index)

    def sweep(self) -> int:
        now = self._clock.seconds()
        dropped = 0
        while self._heap and self._heap[0][0] <= now:
            _, _, key, vary_key = heapq.heappop(self._heap)
            slot = self._entries.get((key, vary_key))
            if slot is not None and slot.drop_at <= now:
                self._discard((key, vary_key))
                dropped += 1
        self._expired += dropped
        return dropped

    def stats(self) -> Dict[str, int]:
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self._max_bytes,
            "max_object": self._max_object,
            "stores": self._stores,
            "evictions": self._evictions,
            "expired": self._expired,
        }

    def _discard(self, entry_key: Tuple[bytes, VaryKey]) -> None:
        """Forget one stored variant (which must exist) and its bytes."""
        slot = self._entries.pop(entry_key)
        self._bytes -= slot.size
        key, vary_key = entry_key
        variants = self._index[key]
        variants.vary_keys.discard(vary_key)
        if not variants.vary_keys:
            del self._index[key]

    def _rebuild_heap(self) -> None:
        """Drop heap items of entries no longer stored."""
        self._heap = [
            (slot.drop_at, next(self._sequence), key, vary_key)
            for (key, vary_key), slot in self._entries.items()
        ]
        heapq.heapify(self._heap)


class CacheSweeper(Service):
    """Runs ``cache.sweep()`` every ``interval`` seconds on ``clock`` while the service runs."""

    def __init__(self, cache: ICacheStore, clock: IReactorTime, interval: float) -> None:
        self._cache = cache
        self._clock = clock
        self._interval = interval
        self._loop: Optional[LoopingCall] = None

    def startService(self) -> None:
        super().startService()
        loop = LoopingCall(self._cache.sweep)
        loop.clock = self._clock
        loop.start(self._interval, now=False)
        self._loop = loop

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
