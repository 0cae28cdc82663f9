"""Passive health: backends that keep failing real requests are ejected for a growing back-off.

:class:`OutlierDetector` is pure logic fed request outcomes and the time; it
says when a backend is ejected and until when. :class:`OutlierEjector` is the
Twisted glue: it feeds the detector with the clock's time, sets
``Backend.ejected`` (which the balancers skip) and schedules the re-admission.

A failure is a gateway failure: a connect failure, a reset or malformed
response, a timeout, or a response whose status is one of the failing
statuses (502, 503 and 504 unless :func:`parse_statuses` gave others). An
application's own 500 is a success here: it says the backend is up and
answering. ``failures`` consecutive failures eject a backend for
``backoff`` seconds, unless :func:`ejection_allowed` refuses: passive
detection never ejects more than ``max_ejection`` percent of the pool, nor
its last eligible backend. When the back-off is over the backend is
half-open: it takes traffic again, a success closes it (streak and back-off
start over) and a single failure ejects it again for twice as long, up to
``max_factor`` times ``backoff``. An active health-check pass ends an
ejection early, into the same half-open state.
"""

from __future__ import annotations

import re
from typing import Dict, FrozenSet, List, Optional, Sequence, Set, Tuple

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from powerlb.backend import Backend, BackendHook
from powerlb.balancing import _eligible  # the balancers' own rule: who can take the next request
from powerlb.stats import Counters

#: Inclusive ``(low, high)`` status ranges, sorted, neither overlapping nor touching.
StatusRanges = Tuple[Tuple[int, int], ...]

#: The statuses that count as failures by default: the gateway errors.
GATEWAY_STATUSES: StatusRanges = ((502, 504),)

#: The statuses an ``outlier-statuses`` range may name: client and server errors.
_LOWEST, _HIGHEST = 400, 599

_RANGE = re.compile(r"\s*([0-9]{3})\s*(?:-\s*([0-9]{3})\s*)?")


def parse_statuses(text: str) -> StatusRanges:
    """Failing statuses from ``"502-504"``, ``"500-599"``, ``"429, 502-504"``... (``"off"``: none).

    Each part is a status or a ``LOW-HIGH`` range of statuses from 400 to 599;
    the result is sorted with overlapping and adjacent ranges merged.
    Raises ValueError saying what is wrong and the fix.
    """
    if text.strip().lower() == "off":
        return ()
    ranges = []
    for part in text.split(","):
        found = _RANGE.fullmatch(part)
        if found is None:
            raise ValueError(
                f"{part.strip()!r} is not a status or a range of them; write e.g. 502-504 or 429,500-599"
            )
        low = int(found.group(1))
        high = int(found.group(2) or low)
        if low > high:
            raise ValueError(
                f"{part.strip()!r} runs backwards; write the lower status first, e.g. {high}-{low}"
            )
        if low < _LOWEST or high > _HIGHEST:
            raise ValueError(
                f"{part.strip()!r} is outside {_LOWEST}-{_HIGHEST}; only error statuses can count as failures"
            )
        ranges.append((low, high))
    merged: List[Tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return tuple(merged)


def format_statuses(ranges: StatusRanges) -> str:
    """``ranges`` as :func:`parse_statuses` reads them back (``"502-504"``, ``"429,500-599"``, ``"off"``)."""
    if not ranges:
        return "off"
    return ",".join(str(low) if low == high else f"{low}-{high}" for low, high in ranges)


def status_set(ranges: StatusRanges) -> FrozenSet[int]:
    """Every status in ``ranges``: one set lookup per response on the request path."""
    return frozenset(status for low, high in ranges for status in range(low, high + 1))


def ejection_allowed(pool_size: int, ejected: int, others_eligible: int, max_ejection: int) -> bool:
    """Whether one more backend of a pool may be ejected (pure).

    ``pool_size`` backends, ``ejected`` of them ejected already,
    ``others_eligible`` that could still take requests besides the
    candidate. Allowed only while the ejected ones stay at most
    ``max_ejection`` percent of the pool and another backend is left to
    take the traffic.
    """
    return others_eligible > 0 and (ejected + 1) * 100 <= max_ejection * pool_size


class _Record:
    """What the detector knows of one backend."""

    __slots__ = ("factor", "half_open", "streak", "until")

    def __init__(self) -> None:
        self.streak = 0  # consecutive failures while admitted
        self.factor = 1  # the next ejection lasts factor * backoff; doubles until it recovers
        self.until = 0.0  # ejected while now < until
        self.half_open = False  # re-admitted, not yet recovered: one failure ejects


class OutlierDetector:
    """Consecutive-failure outlier detection with doubling back-off (pure: time is passed in).

    ``failures`` of 0 turns detection off: nothing is ever ejected. Outcomes
    reported while a backend is ejected (requests sent before the ejection)
    are ignored.
    """

    def __init__(self, failures: int = 5, backoff: float = 10.0, max_factor: int = 32) -> None:
        if failures < 0 or backoff <= 0 or max_factor < 1:
            raise ValueError(
                f"need failures >= 0, backoff > 0 and max_factor >= 1 "
                f"(got failures={failures}, backoff={backoff}, max_factor={max_factor})"
            )
        self.failures = failures
        self.backoff = backoff
        self.max_factor = max_factor
        self._records: Dict[Backend, _Record] = {}

    def _record(self, backend: Backend) -> _Record:
        record = self._records.get(backend)
        if record is None:
            record = self._records[backend] = _Record()
        return record

    def is_ejected(self, backend: Backend, now: float) -> bool:
        """Whether ``backend`` is out of rotation at time ``now``."""
        record = self._records.get(backend)
        return record is not None and now < record.until

    def ejected_until(self, backend: Backend) -> float:
        """When the current or last ejection of ``backend`` ends (0.0 if it never was ejected)."""
        record = self._records.get(backend)
        return 0.0 if record is None else record.until

    def record_success(self, backend: Backend, now: float) -> None:
        """A request to ``backend`` succeeded: its streak and back-off start over."""
        record = self._records.get(backend)
        if record is None or now < record.until:  # nothing to start over, or ejected
            return
        record.streak = 0
        record.factor = 1
        record.half_open = False

    def record_failure(self, backend: Backend, now: float) -> bool:
        """A request to ``backend`` failed; True if that makes it due for ejection.

        Due means ``failures`` failures in a row, or one while half-open; the
        streak starts over. The caller then ejects it with :meth:`eject`, or
        not (the pool's ejection cap).
        """
        if not self.failures or self.is_ejected(backend, now):
            return False
        record = self._record(backend)
        record.streak += 1
        if record.streak < self.failures and not record.half_open:
            return False
        record.streak = 0
        return True

    def eject(self, backend: Backend, now: float) -> float:
        """Eject ``backend`` from ``now`` on; returns when that ends (see :meth:`ejected_until`).

        The back-off doubles for the next ejection, and the backend is
        half-open once this one is over.
        """
        record = self._record(backend)
        record.until = now + self.backoff * record.factor
        record.factor = min(record.factor * 2, self.max_factor)
        record.half_open = True
        return record.until

    def readmit(self, backend: Backend, now: float) -> bool:
        """End an ejection early (half-open); True if ``backend`` was ejected."""
        if not self.is_ejected(backend, now):
            return False
        self._records[backend].until = now
        return True


class OutlierEjector(Service):
    """Ejects outliers from rotation on a clock: sets ``Backend.ejected`` and re-admits on time.

    Call :meth:`response` with the status of every response head from a
    backend, :meth:`failure` for every request to it that got no (or a
    broken) response, and :meth:`health_passed` when an active health check
    of it passes. ``statuses`` are the failing statuses (see
    :func:`parse_statuses`). ``pool`` is the live list of the backends
    (changed in place on reloads): an ejection that :func:`ejection_allowed`
    refuses for it (more than ``max_ejection`` percent ejected, or no other
    eligible backend) is not made and counts in
    ``counters.ejections_refused``. ``on_readmit(backend)`` is called when a
    backend comes back (e.g. to start its slow start). Stopping the service
    cancels the pending re-admissions and re-admits those backends at once.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        pool: Sequence[Backend],
        failures: int = 5,
        backoff: float = 10.0,
        max_factor: int = 32,
        max_ejection: int = 50,
        statuses: StatusRanges = GATEWAY_STATUSES,
        counters: Optional[Counters] = None,
        on_readmit: Optional[BackendHook] = None,
    ) -> None:
        if not 0 <= max_ejection <= 100:
            raise ValueError(f"max_ejection is a percentage from 0 to 100 (got {max_ejection})")
        self.detector = OutlierDetector(failures, backoff, max_factor)
        self._clock = clock
        self._pool = pool
        self._max_ejection = max_ejection
        self._failing = status_set(statuses)
        self.counters = Counters() if counters is None else counters
        self._on_readmit = on_readmit
        self._timers: Dict[Backend, IDelayedCall] = {}
        self._refused: Set[Backend] = set()  # refused since their last success: logged once

    # Until its timer has run, an ejected backend's outcomes are ignored even if the
    # detector's back-off is already over: the reactor may handle I/O first.

    def response(self, backend: Backend, status: int) -> None:
        """A response head with ``status`` came from ``backend``: a failure if it is a failing status."""
        if status in self._failing:
            self.failure(backend)
        else:
            self.success(backend)

    def success(self, backend: Backend) -> None:
        """A request to ``backend`` succeeded (a response with a status that is not failing arrived)."""
        if backend not in self._timers:
            self.detector.record_success(backend, self._clock.seconds())
            self._refused.discard(backend)

    def failure(self, backend: Backend) -> None:
        """A request to ``backend`` failed (no, broken or timed-out response, or a failing status)."""
        now = self._clock.seconds()
        if backend in self._timers or not self.detector.record_failure(backend, now):
            return
        pool = self._pool
        others = sum(1 for other in pool if other is not backend and _eligible(other, ()))
        ejected = sum(1 for other in pool if other.ejected)
        if not ejection_allowed(len(pool), ejected, others, self._max_ejection):
            self.counters.ejections_refused += 1
            if backend not in self._refused:
                self._refused.add(backend)
                why = (
                    "no other backend can take its requests"
                    if not others
                    else f"outlier-max-ejection ({self._max_ejection}%) of the pool is out already"
                )
                self.log.warn(
                    "backend {url} not ejected although its requests keep failing: {why}",
                    url=backend.url,
                    why=why,
                )
            return
        backoff = self.detector.eject(backend, now) - now
        backend.ejected = True
        backend.ejections += 1
        self._timers[backend] = self._clock.callLater(backoff, self._readmit, backend, "its back-off is over")
        self.log.warn(
            "backend {url} ejected for {backoff:g}s: its requests keep failing (ejection {count})",
            url=backend.url,
            backoff=backoff,
            count=backend.ejections,
        )

    def health_passed(self, backend: Backend) -> None:
        """An active health check of ``backend`` passed: end its ejection now."""
        timer = self._timers.get(backend)
        if timer is not None:
            timer.cancel()
            self._readmit(backend, "a health check passed")

    def stopService(self) -> None:
        """Cancel the pending re-admissions and put those backends back in rotation."""
        Service.stopService(self)
        timers, self._timers = self._timers, {}
        now = self._clock.seconds()
        for backend, timer in timers.items():
            timer.cancel()
            self.detector.readmit(backend, now)
            backend.ejected = False

    def _readmit(self, backend: Backend, why: str) -> None:
        del self._timers[backend]
        self.detector.readmit(backend, self._clock.seconds())
        backend.ejected = False
        self.log.info("backend {url} re-admitted: {why}", url=backend.url, why=why)
        if self._on_readmit is not None:
            self._on_readmit(backend)
