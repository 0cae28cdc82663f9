"""Load-balancing algorithms: which backend gets the next request.

Pure logic: no sockets, no reactor, no clock. Every balancer implements
:class:`IBalancer`; :data:`ALGORITHMS` maps the configuration names to the
classes and :func:`make_balancer` builds one by name, wrapped in
:class:`WithBackups` so backup backends work the same for every algorithm,
and in :class:`StickySessions` when sticky sessions are on.

A backend is eligible while it is healthy (active checks), not ejected
(outlier detection), not draining or disabled (admin API) and not excluded by
the caller. ``pick()`` runs once per
proxied request, so each implementation is a single O(n) pass (a few passes at
most) over the backends without building lists and without logging. Weighted
algorithms use ``Backend.effective_weight``, a positive integer that a slow
start lowers for a while. Backends are compared by identity, so
``set_backends`` keeps the state of the ``Backend`` objects that are still in
the new set.
"""

from __future__ import annotations

import functools
import hashlib
import math
import random
from fractions import Fraction
from typing import Callable, Collection, Dict, List, Optional, Sequence, Tuple

from zope.interface import Interface, implementer

from powerlb.backend import Backend
from powerlb.hashkey import KeyFunction, RoutedRequest, client_key, key_function
from powerlb.sticky import StickyCookie, backend_id


class IBalancer(Interface):
    """Chooses the backend for the next request."""

    def pick(request: Optional[RoutedRequest] = None, exclude: Collection[Backend] = ()) -> Optional[Backend]:
        """A healthy backend not in ``exclude``, or None when there is none.

        ``request`` is the parsed client request, read only by the algorithms
        that route on it (hashing, sticky cookies); the others ignore it.
        """

    def set_backends(backends: Sequence[Backend]) -> None:
        """Replace the backends (config reload), keeping the state of those that remain."""


def _eligible(backend: Backend, exclude: Collection[Backend]) -> bool:
    """Whether ``backend`` may take the next request: the one eligibility rule of every balancer."""
    return (
        backend.healthy
        and not backend.ejected
        and not backend.draining
        and not backend.disabled
        and backend not in exclude
    )


def _serves_sessions(backend: Backend, exclude: Collection[Backend]) -> bool:
    """Whether ``backend`` may take a request of a client stuck to it: as :func:`_eligible`, draining too
    (but never while disabled)."""
    return backend.healthy and not backend.ejected and not backend.disabled and backend not in exclude


class _CursorBalancer:
    """Shared part of the balancers that rotate a cursor over the backend list."""

    def __init__(self, backends: Sequence[Backend] = ()) -> None:
        self._backends: List[Backend] = list(backends)
        self._next = 0

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Replace the backends; the cursor stays on the same backend if it remains."""
        old, new = self._backends, list(backends)
        following = old[self._next] if self._next < len(old) else None
        self._next = new.index(following) if following in new else 0
        self._backends = new


@implementer(IBalancer)
class RoundRobin(_CursorBalancer):
    """``round-robin``: cycle over the backends in order, skipping unhealthy or excluded ones."""

    def pick(
        self, request: Optional[RoutedRequest] = None, exclude: Collection[Backend] = ()
    ) -> Optional[Backend]:
        backends = self._backends
        count = len(backends)
        start = self._next
        for offset in range(count):
            index = (start + offset) % count
            backend = backends[index]
            if _eligible(backend, exclude):
                self._next = (index + 1) % count
                return backend
        return None


@implementer(IBalancer)
class LeastConnections(_CursorBalancer):
    """``least-connections``: the lowest ``in_flight / effective_weight``, ties broken round-robin.

    Ratios are compared exactly by cross-multiplication, so equal loads are real
    ties. The scan starts just after the previously chosen backend and keeps the
    first minimum, so tied backends take turns.
    """

    def pick(
        self, request: Optional[RoutedRequest] = None, exclude: Collection[Backend] = ()
    ) -> Optional[Backend]:
        backends = self._backends
        count = len(backends)
        start = self._next
        best: Optional[Backend] = None
        best_index = best_weight = 0
        for offset in range(count):
            index = (start + offset) % count
            backend = backends[index]
            if not _eligible(backend, exclude):
                continue
            # backend.in_flight / weight < best.in_flight / best_weight
            weight = backend.effective_weight
            if best is None or backend.in_flight * best_weight < best.in_flight * weight:
                best, best_index, best_weight = backend, index, weight
        if best is not None:
            self._next = (best_index + 1) % count
        return best


@implementer(IBalancer)
class SmoothWeightedRoundRobin:
    """``weighted-round-robin``: nginx's smooth weighted round-robin.

    On each pick every eligible backend's current weight grows by its
    effective weight,
    the largest current weight wins (the first one in list order on a tie) and
    the winner's current weight drops by the total weight of the eligible
    backends. Weights 5, 1, 1 give ``a a b a c a a``, repeating. Unhealthy or
    excluded backends are skipped and their current weight left alone, as nginx
    does.
    """

    def __init__(self, backends: Sequence[Backend] = ()) -> None:
        self._backends: List[Backend] = []
        self._current: List[int] = []
        self.set_backends(backends)

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Replace the backends; those that remain keep their current weight, new ones get 0."""
        kept = dict(zip(self._backends, self._current))
        self._backends = list(backends)
        self._current = [kept.get(backend, 0) for backend in self._backends]

    def pick(
        self, request: Optional[RoutedRequest] = None, exclude: Collection[Backend] = ()
    ) -> Optional[Backend]:
        backends = self._backends
        current = self._current
        total = 0
        best_index = -1
        best_current = 0
        for index in range(len(backends)):
            backend = backends[index]
            if not _eligible(backend, exclude):
                continue
            weight = backend.effective_weight
            total += weight
            value = current[index] + weight
            current[index] = value
            if best_index < 0 or value > best_current:
                best_index, best_current = index, value
        if best_index < 0:
            return None
        current[best_index] = best_current - total
        return backends[best_index]


@implementer(IBalancer)
class PowerOfTwoChoices:
    """``random-two-choices``: sample two distinct backends by weight, keep the less loaded.

    Both candidates are drawn at random with probability proportional to their
    effective weight (the second among the remaining ones); the one with the lower
    ``in_flight / effective_weight`` wins, the first drawn on a tie. With a single
    eligible backend it is returned without drawing. ``rng`` is injectable so
    tests are deterministic.
    """

    def __init__(self, backends: Sequence[Backend] = (), rng: Optional[random.Random] = None) -> None:
        self._backends: List[Backend] = list(backends)
        self._rng = rng if rng is not None else random.Random()

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Replace the backends (this balancer keeps no per-backend state)."""
        self._backends = list(backends)

    def _draw(self, total: int, exclude: Collection[Backend], skip: Optional[Backend]) -> Backend:
        """An eligible backend other than ``skip``, drawn by weight out of ``total``."""
        target = self._rng.randrange(total)
        for backend in self._backends:
            if backend is skip or not _eligible(backend, exclude):
                continue
            target -= backend.effective_weight
            if target < 0:
                return backend
        raise AssertionError("total weight does not match the eligible backends")

    def pick(
        self, request: Optional[RoutedRequest] = None, exclude: Collection[Backend] = ()
    ) -> Optional[Backend]:
        total = 0
        count = 0
        only: Optional[Backend] = None
        for backend in self._backends:
            if _eligible(backend, exclude):
                total += backend.effective_weight
                count += 1
                only = backend
        if count < 2:
            return only
        first = self._draw(total, exclude, None)
        second = self._draw(total - first.effective_weight, exclude, first)
        if second.in_flight * first.effective_weight < first.in_flight * second.effective_weight:
            return second
        return first


_HASH_BYTES = 8
#: Digest bits dropped so the rest (52 bits) plus one half maps exactly into (0, 1).
_HASH_SHIFT = 8 * _HASH_BYTES - 52
_HASH_SCALE = 2.0**-52


@implementer(IBalancer)
class ConsistentHash:
    """``consistent-hash`` (alias ``source-hash``): weighted rendezvous (HRW) hashing of a request key.

    ``key_of`` gives the key of a request (see :mod:`powerlb.hashkey`; the
    client address by default). Each backend scores
    ``-effective_weight / ln(u)`` where ``u`` in (0, 1) comes from a hash of
    (backend URL, key); the highest score wins. A key therefore sticks to one
    backend, backends get keys in proportion to their weight, and when a
    backend goes away or down only the keys it had move, about 1/N of them
    (the other scores do not change).

    Bounded loads (Mirrokni, Thorup and Zadimoghaddam; HAProxy's
    ``hash-balance-factor``): with ``balance_factor`` c > 1 a backend takes a
    new request only while ``in_flight + 1 <= ceil(c * (total_in_flight + 1)
    * weight_share)``, so one hot key cannot overload its backend: the request
    goes to the best-scoring backend still under its bound, i.e. the next in
    the key's preference order. Some backend always is under its bound. 0
    turns the bound off.

    The hash is BLAKE2b with an 8-byte digest: it is in the standard library,
    fast, stable across processes and restarts (unlike ``hash()``), and, unlike
    CRC32, well mixed, which HRW needs for its scores to be independent. The
    per-backend URL prefix is hashed once and the state copied on each pick.
    """

    def __init__(
        self, backends: Sequence[Backend] = (), key_of: KeyFunction = client_key, balance_factor: float = 0.0
    ) -> None:
        self.key_of = key_of
        #: The balance factor as an exact ratio (numerator, denominator), or None when unbounded.
        self._factor: Optional[Tuple[int, int]] = None
        if balance_factor:
            if balance_factor <= 1:
                raise ValueError(f"balance factor {balance_factor} must be more than 1 (or 0: unbounded)")
            ratio = Fraction(balance_factor).limit_denominator(10_000)
            self._factor = (ratio.numerator, ratio.denominator)
        self._backends: List[Backend] = []
        self._seeds: List[hashlib.blake2b] = []
        self.set_backends(backends)

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Replace the backends; a key's backend only changes if its backend left."""
        self._backends = list(backends)
        self._seeds = [
            hashlib.blake2b(backend.url.encode() + b"\0", digest_size=_HASH_BYTES)
            for backend in self._backends
        ]

    def pick(
        self, request: Optional[RoutedRequest] = None, exclude: Collection[Backend] = ()
    ) -> Optional[Backend]:
        return self.choose(b"" if request is None else self.key_of(request), exclude)

    def choose(self, key: bytes, exclude: Collection[Backend] = ()) -> Optional[Backend]:
        """The backend for ``key``: the best-scoring eligible one (under its bound, when bounded)."""
        backends = self._backends
        seeds = self._seeds
        factor = self._factor
        load = scale = 0
        if factor is not None:
            # A backend fits while in_flight + 1 <= ceil(c * load * weight / total_weight), with
            # load = total in flight + 1; for whole in_flight that is in_flight < c * load * weight / total.
            numerator, denominator = factor
            total_weight = 0
            load = 1
            for backend in backends:
                if _eligible(backend, exclude):
                    load += backend.in_flight
                    total_weight += backend.effective_weight
            load *= numerator
            scale = total_weight * denominator
        best: Optional[Backend] = None
        best_score = 0.0
        for index in range(len(backends)):
            backend = backends[index]
            if not _eligible(backend, exclude):
                continue
            if factor is not None and backend.in_flight * scale >= load * backend.effective_weight:
                continue
            digest = seeds[index].copy()
            digest.update(key)
            unit = ((int.from_bytes(digest.digest(), "big") >> _HASH_SHIFT) + 0.5) * _HASH_SCALE
            score = -backend.effective_weight / math.log(unit)
            if best is None or score > best_score:
                best, best_score = backend, score
        return best


@implementer(IBalancer)
class WithBackups:
    """Backup backends for any algorithm: the primaries while one is eligible, else the backups.

    Holds two balancers built by ``factory``: ``primary`` over the backends
    whose ``backup`` is false and ``backup`` over the others. A pick asks the
    backup balancer only when the primary one has no healthy, admitted,
    non-draining, enabled, non-excluded backend left, so backups take traffic exactly while no
    primary can. Each tier keeps its own algorithm state.
    """

    def __init__(
        self, factory: Callable[[Sequence[Backend]], IBalancer], backends: Sequence[Backend] = ()
    ) -> None:
        self.primary = factory(())
        self.backup = factory(())
        self.set_backends(backends)

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Split the backends into the two tiers; each tier keeps the state of those that remain."""
        self.primary.set_backends([backend for backend in backends if not backend.backup])
        self.backup.set_backends([backend for backend in backends if backend.backup])

    def pick(
        self, request: Optional[RoutedRequest] = None, exclude: Collection[Backend] = ()
    ) -> Optional[Backend]:
        backend = self.primary.pick(request, exclude)
        if backend is None:
            backend = self.backup.pick(request, exclude)
        return backend


@implementer(IBalancer)
class StickySessions:
    """Sticky sessions over any balancer: a request whose sticky cookie names a backend goes there.

    The cookie (see :mod:`powerlb.sticky`) names a backend by
    :func:`~powerlb.sticky.backend_id`. That backend takes the request while
    it is healthy, not ejected, not disabled and not excluded (a retry) — also
    while it drains, as HAProxy does, so sessions on it can finish — and even
    when it is a backup. Otherwise, or without the cookie, ``inner`` picks; the
    client response then gets the cookie of that backend.
    """

    def __init__(self, inner: IBalancer, cookie: StickyCookie, backends: Sequence[Backend] = ()) -> None:
        self.inner = inner
        self.cookie = cookie
        self._by_id: Dict[bytes, Backend] = {}
        self.set_backends(backends)

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Replace the backends of ``inner`` and of the cookie look-up."""
        self.inner.set_backends(backends)
        self._by_id = {backend_id(backend.url): backend for backend in backends}

    def pick(
        self, request: Optional[RoutedRequest] = None, exclude: Collection[Backend] = ()
    ) -> Optional[Backend]:
        if request is not None:
            wanted = self.cookie.wanted(request.headers)
            if wanted is not None:
                backend = self._by_id.get(wanted)
                if backend is not None and _serves_sessions(backend, exclude):
                    return backend
        return self.inner.pick(request, exclude)


ALGORITHMS: Dict[str, Callable[..., IBalancer]] = {
    "round-robin": RoundRobin,
    "weighted-round-robin": SmoothWeightedRoundRobin,
    "least-connections": LeastConnections,
    "random-two-choices": PowerOfTwoChoices,
    "consistent-hash": ConsistentHash,
    "source-hash": ConsistentHash,
}


def make_balancer(
    name: str,
    backends: Sequence[Backend],
    rng: Optional[random.Random] = None,
    *,
    hash_key: str = "client",
    balance_factor: float = 0.0,
    sticky: Optional[StickyCookie] = None,
) -> IBalancer:
    """Build the balancer called ``name`` over ``backends``, with backups and ``sticky`` sessions (if given).

    ``rng`` feeds the random algorithm; ``hash_key`` (a parsed ``hash-key``)
    and ``balance_factor`` configure the hashing one.
    """
    factory = ALGORITHMS.get(name)
    if factory is None:
        choices = ", ".join(sorted(ALGORITHMS))
        raise ValueError(f"unknown algorithm {name!r}; choose one of: {choices}")
    if factory is PowerOfTwoChoices:
        factory = functools.partial(PowerOfTwoChoices, rng=rng)
    elif factory is ConsistentHash:
        factory = functools.partial(
            ConsistentHash, key_of=key_function(hash_key), balance_factor=balance_factor
        )
    if sticky is None:
        return WithBackups(factory, backends)
    return StickySessions(WithBackups(factory), sticky, backends)
