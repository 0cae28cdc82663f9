"""Passive health: backends that keep failing real requests are ejected for a growing back-off.

:class:`OutlierDetector` is pure logic fed request outcomes and the time; it
says when a backend is ejected and until when. :class:`OutlierEjector` is the
Twisted glue: it feeds the detector with the clock's time, sets
``Backend.ejected`` (which the balancers skip) and schedules the re-admission.

A failure is a connect failure, a reset or broken response, a timeout or a
5xx response. ``failures`` consecutive failures eject a backend for
``backoff`` seconds. When the back-off is over the backend is half-open: it
takes traffic again, a success closes it (streak and back-off start over)
and a single failure ejects it again for twice as long, up to
``max_factor`` times ``backoff``. An active health-check pass ends an
ejection early, into the same half-open state.
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

from powerlb.backend import Backend, BackendHook


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
        if self.is_ejected(backend, now):
            return
        record = self._record(backend)
        record.streak = 0
        record.factor = 1
        record.half_open = False

    def record_failure(self, backend: Backend, now: float) -> bool:
        """A request to ``backend`` failed; True if that ejects it (see :meth:`ejected_until`)."""
        if not self.failures or self.is_ejected(backend, now):
            return False
        record = self._record(backend)
        record.streak += 1
        if record.streak < self.failures and not record.half_open:
            return False
        record.until = now + self.backoff * record.factor
        record.factor = min(record.factor * 2, self.max_factor)
        record.streak = 0
        record.half_open = True
        return True

    def readmit(self, backend: Backend, now: float) -> bool:
        """End an ejection early (half-open); True if ``backend`` was ejected."""
        if not self.is_ejected(backend, now):
            return False
        self._records[backend].until = now
        return True


class OutlierEjector(Service):
    """Ejects outliers from rotation on a clock: sets ``Backend.ejected`` and re-admits on time.

    Call :meth:`success` and :meth:`failure` with the outcome of every
    request sent to a backend, and :meth:`health_passed` when an active
    health check of it passes. ``on_readmit(backend)`` is called when a
    backend comes back (e.g. to start its slow start). Stopping the service
    cancels the pending re-admissions and re-admits those backends at once.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        failures: int = 5,
        backoff: float = 10.0,
        max_factor: int = 32,
        on_readmit: Optional[BackendHook] = None,
    ) -> None:
        self.detector = OutlierDetector(failures, backoff, max_factor)
        self._clock = clock
        self._on_readmit = on_readmit
        self._timers: Dict[Backend, IDelayedCall] = {}

    # Until its timer has run, an ejected backend's outcomes are ignored even if the
    # detector's back-off is already over: the reactor may handle I/O first.

    def success(self, backend: Backend) -> None:
        """A request to ``backend`` succeeded (a response below 500 arrived)."""
        if backend not in self._timers:
            self.detector.record_success(backend, self._clock.seconds())

    def failure(self, backend: Backend) -> None:
        """A request to ``backend`` failed (no or broken response, timeout, or a 5xx status)."""
        now = self._clock.seconds()
        if backend in self._timers or not self.detector.record_failure(backend, now):
            return
        backoff = self.detector.ejected_until(backend) - now
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
