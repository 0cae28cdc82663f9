"""Active health checks and slow start: rise/fall hysteresis and weight ramps (pure), and their services.

:class:`HealthState` is pure logic: it is fed check outcomes and says when a
backend's health flips. :class:`CheckKind` says what a check is: a TCP
connect (the default, as HAProxy's plain ``check``: any application
passes), an HTTP GET of ``health-path`` (2xx and 3xx pass), or none.
:class:`HealthChecker` is the Twisted service that probes every backend each
``interval`` seconds on an injected clock and sets ``Backend.healthy`` when a
backend's state flips. :func:`ramp_weight` is the slow-start ramp and
:class:`SlowStart` the service that moves ``Backend.effective_weight`` along
it for backends that come back.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Union

from twisted.application.service import Service
from twisted.internet import defer, error
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import (
    IAddress,
    IConnector,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IReactorTCP,
    IReactorTime,
    ITCPTransport,
)
from twisted.internet.protocol import ClientFactory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from powerlb.backend import Backend, BackendHook
from powerlb.tls import tls_failure
from powerlb.upstream import probe as http_probe

#: What a probe fires with: the HTTP status of a GET, or None for a connection made (TCP check).
ProbeResult = Optional[int]


class HealthState:
    """Rise/fall hysteresis for one backend.

    While up, ``fall`` consecutive failures take it down; while down, ``rise``
    consecutive passes bring it up. An outcome that agrees with the current
    state resets the streak.
    """

    def __init__(self, rise: int = 2, fall: int = 3, healthy: bool = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError(f"rise and fall must be at least 1 (got rise={rise}, fall={fall})")
        self.rise = rise
        self.fall = fall
        self.healthy = healthy
        self._streak = 0

    def record(self, ok: bool) -> Optional[bool]:
        """Count one check outcome; return the new health if it flipped, else None."""
        if ok == self.healthy:
            self._streak = 0
            return None
        self._streak += 1
        if self._streak < (self.fall if self.healthy else self.rise):
            return None
        self.healthy = ok
        self._streak = 0
        return ok


def is_healthy_status(status: int) -> bool:
    """Whether a health-check HTTP status counts as a pass (2xx or 3xx)."""
    return 200 <= status < 400


def passes(result: Any) -> bool:
    """Whether a probe's result is a passed check: a connection made (None) or a 2xx/3xx status."""
    return result is None or (isinstance(result, int) and is_healthy_status(result))


def _describe(result: Union[ProbeResult, Failure]) -> str:
    """A short label for a probe outcome: "connected", the status, "timeout" or the error's class name."""
    if result is None:
        return "connected"
    if not isinstance(result, Failure):
        return str(result)
    if result.check(defer.TimeoutError, error.TimeoutError):
        return "timeout"
    return result.type.__name__ if result.type is not None else "error"


class CheckKind:
    """What the active health check of a backend is, from ``health-check`` and ``health-path`` (pure).

    ``enabled`` false: no probes at all (passive detection only). Else a TCP
    connect (TLS handshake included for ``https://`` backends) when ``path``
    is None, or an HTTP GET of ``path`` whose 2xx or 3xx status passes.
    ``what`` names the probe and ``hint`` says how to change it, for the log.
    """

    def __init__(self, enabled: bool = True, path: Optional[str] = None) -> None:
        self.enabled = enabled
        self.path = path if enabled else None
        if not enabled:
            self.what = "no check"
            self.hint = "health-check is off"
        elif path is None:
            self.what = "TCP connect"
            self.hint = (
                "a check passes when a connection opens within health-timeout; "
                "set health-path for HTTP checks, or health-check: off"
            )
        else:
            self.what = f"GET {path}"
            self.hint = (
                "a check passes on a 2xx or 3xx answer within health-timeout; set health-path "
                "to a path the backend serves, leave it out for TCP connect checks, or health-check: off"
            )


class TLSHandshakeFailed(Exception):
    """A TCP check of an https:// backend connected, but its TLS handshake failed."""


_DONE = Failure(error.ConnectionDone())


@implementer(IHandshakeListener)
class _ConnectProbe(Protocol):
    """Fires the factory's Deferred once connected (TLS: once the handshake is done), then hangs up."""

    transport: Optional[ITCPTransport]

    def __init__(self, factory: _ConnectProbeFactory) -> None:
        self.factory = factory

    def connectionMade(self) -> None:
        if not self.factory.tls:
            self._passed()

    def handshakeCompleted(self) -> None:
        self._passed()

    def _passed(self) -> None:
        assert self.transport is not None  # connected
        self.transport.loseConnection()
        self.factory.finish(None)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        problem = tls_failure(reason) if self.factory.tls else None
        self.factory.finish(Failure(TLSHandshakeFailed(problem)) if problem else reason)


class _ConnectProbeFactory(ClientFactory):
    """One TCP check: its connector, and the Deferred that hears how it went (once)."""

    noisy = False

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.connector: Optional[IConnector] = None
        self.protocol_made: Optional[_ConnectProbe] = None
        self.ended = False
        self.deferred: Deferred[ProbeResult] = Deferred(self._cancel)

    def buildProtocol(self, addr: Optional[IAddress]) -> _ConnectProbe:
        self.protocol_made = _ConnectProbe(self)
        return self.protocol_made

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.finish(reason)

    def finish(self, result: Optional[Failure]) -> None:
        if self.ended:
            return
        self.ended = True
        if result is None:
            self.deferred.callback(None)
        else:
            self.deferred.errback(result)

    def _cancel(self, _: Deferred[ProbeResult]) -> None:
        """Abandon the check (its timeout): the Deferred fails with CancelledError, nothing else."""
        self.ended = True
        if self.protocol_made is not None and self.protocol_made.transport is not None:
            self.protocol_made.transport.abortConnection()
        elif self.connector is not None:  # set as soon as connectTCP returns
            self.connector.stopConnecting()


def connect_probe(
    reactor: IReactorTCP,
    backend: Backend,
    timeout: float,
    tls: Optional[IOpenSSLClientConnectionCreator] = None,
) -> Deferred[ProbeResult]:
    """Open a connection to ``backend`` and close it; fires with None once it is open.

    With ``tls`` (the backend's ``IOpenSSLClientConnectionCreator``) the TLS
    handshake must complete too, so an untrusted certificate fails the check.
    Cancelling the Deferred abandons the attempt.
    """
    factory = _ConnectProbeFactory(tls is not None)
    connect_to: ClientFactory[Any] = TLSMemoryBIOFactory(tls, True, factory) if tls is not None else factory
    factory.connector = reactor.connectTCP(backend.host, backend.port, connect_to, timeout=timeout)
    return factory.deferred


def backend_probe(
    reactor: IReactorTCP,
    kind: CheckKind,
    timeout: float,
    tls_for: Callable[[Backend], Optional[IOpenSSLClientConnectionCreator]],
) -> Optional[Callable[[Backend], Deferred[ProbeResult]]]:
    """The probe function a :class:`HealthChecker` runs for ``kind`` (None when checks are off).

    ``tls_for(backend)`` is the backend's TLS connection creator, or None for http://.
    """
    if not kind.enabled:
        return None
    if kind.path is None:
        return lambda backend: connect_probe(reactor, backend, timeout, tls_for(backend))
    path = kind.path.encode()
    return lambda backend: http_probe(reactor, backend, path, timeout, tls_for(backend))


class HealthChecker(Service):
    """Probes every backend (but disabled ones) each ``interval`` seconds and flips ``Backend.healthy``.

    ``probe(backend)`` returns a Deferred firing with the HTTP status of a GET
    on the health path, or with None for a connection made (TCP check); with
    no ``probe`` (``health-check: off``) nothing is ever probed and backends
    stay healthy. ``kind`` describes the probe in the DOWN log line. A probe
    that raises, fails or takes longer than ``timeout`` seconds counts as a
    failed check. A round waits for all of its probes, so rounds never
    overlap; a slow round delays the next one.

    Every outcome counts in ``Backend.checks`` (``pass`` or ``fail``).
    ``on_pass(backend)`` is called for every passed check (e.g. to end an
    outlier ejection early) and ``on_up(backend)`` when a backend goes from
    DOWN to UP (e.g. to start its slow start).
    """

    log = Logger()

    def __init__(
        self,
        backends: Sequence[Backend],
        probe: Optional[Callable[[Backend], Deferred[ProbeResult]]],
        clock: IReactorTime,
        interval: float,
        timeout: float,
        rise: int = 2,
        fall: int = 3,
        on_pass: Optional[BackendHook] = None,
        on_up: Optional[BackendHook] = None,
        kind: Optional[CheckKind] = None,
    ) -> None:
        self._probe = probe
        self.kind = CheckKind() if kind is None else kind
        self._clock = clock
        self._interval = interval
        self._timeout = timeout
        self._rise = rise
        self._fall = fall
        self._on_pass = on_pass
        self._on_up = on_up
        self._backends: List[Backend] = []
        self._states: Dict[Backend, HealthState] = {}
        self._last: Dict[Backend, str] = {}
        self._pending: Set[Deferred[ProbeResult]] = set()
        self._loop: Optional[LoopingCall] = None
        self.set_backends(backends)

    def set_backends(self, backends: Sequence[Backend]) -> None:
        """Replace the checked backends (config reload).

        Backends still present keep their streaks and last result; new ones
        start healthy. Probes in flight for removed backends are ignored.
        """
        self._backends = list(backends)
        states: Dict[Backend, HealthState] = {}
        for backend in self._backends:
            state = self._states.get(backend)
            if state is None:
                backend.healthy = True
                state = HealthState(self._rise, self._fall)
            states[backend] = state
        self._states = states
        self._last = {b: r for b, r in self._last.items() if b in states}

    def last_result(self, backend: Backend) -> Optional[str]:
        """The last probe outcome ("connected", "200", "timeout", "ConnectionRefusedError"), or None."""
        return self._last.get(backend)

    def startService(self) -> None:
        """Start checking: a first round right away, then one every ``interval`` (none without a probe)."""
        Service.startService(self)
        if self._probe is None:
            return
        self._loop = LoopingCall(self.check_all)
        self._loop.clock = self._clock
        self._loop.start(self._interval, now=True)

    def stopService(self) -> None:
        """Stop the loop and cancel the probes in flight (their outcome is not counted)."""
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        pending, self._pending = self._pending, set()
        for probe in pending:
            probe.cancel()

    def check_all(self) -> Deferred[None]:
        """Probe every backend that is not disabled at once; fires (never fails) when all have ended.

        A disabled backend (maintenance) is not probed and keeps the health it
        had; checks resume with the first round after it is enabled again.
        """
        run = self._probe
        if run is None:
            return succeed(None)
        round_ = gatherResults(
            [self._check(run, backend) for backend in self._backends if not backend.disabled]
        )
        return round_.addCallback(lambda _: None)

    def _check(self, run: Callable[[Backend], Deferred[ProbeResult]], backend: Backend) -> Deferred[None]:
        """Run one probe with a timeout and record its outcome; never fails."""
        try:
            probe = run(backend)
        except Exception:
            probe = fail()
        probe.addTimeout(self._timeout, self._clock)
        self._pending.add(probe)

        def finished(result: Union[ProbeResult, Failure]) -> None:
            if probe in self._pending:  # else cancelled by stopService: not a real outcome
                self._pending.discard(probe)
                self._record(backend, result)

        return probe.addBoth(finished)

    def _record(self, backend: Backend, result: Union[ProbeResult, Failure]) -> None:
        state = self._states.get(backend)
        if state is None:  # removed by a reload while its probe was in flight
            return
        label = _describe(result)
        self._last[backend] = label
        ok = passes(result)
        backend.checks["pass" if ok else "fail"] += 1
        if ok and self._on_pass is not None:
            self._on_pass(backend)
        flipped = state.record(ok)
        if flipped is None:
            return
        backend.healthy = flipped
        if flipped:
            self.log.info(
                "backend {url} is UP after {count} passed checks", url=backend.url, count=state.rise
            )
            if self._on_up is not None:
                self._on_up(backend)
        else:
            self.log.warn(
                "backend {url} is DOWN after {count} failed checks (last: {last}, {what}); {hint}",
                url=backend.url,
                count=state.fall,
                last=label,
                what=self.kind.what,
                hint=self.kind.hint,
            )


def ramp_weight(full: int, elapsed: float, duration: float) -> int:
    """The effective weight ``elapsed`` seconds into a slow start lasting ``duration`` seconds.

    Rises linearly from 1 at the start to ``full`` at the end (rounded down,
    so ``full`` is reached only when the ramp is over).
    """
    if elapsed >= duration:
        return full
    return 1 + int((full - 1) * max(elapsed, 0.0) / duration)


class SlowStart(Service):
    """Ramps up the effective weight of backends that come back, over ``duration`` seconds.

    :meth:`begin` (for a backend that is UP again or re-admitted) drops its
    ``effective_weight`` to 1; while any backend ramps, a loop on ``clock``
    raises it every ``duration / steps`` seconds along :func:`ramp_weight` up
    to ``Backend.full_weight``. A ``duration`` of 0 turns slow start off.
    Stopping the service ends every ramp at full weight.
    """

    def __init__(self, clock: IReactorTime, duration: float, steps: int = 10) -> None:
        if duration < 0 or steps < 1:
            raise ValueError(f"need duration >= 0 and steps >= 1 (got duration={duration}, steps={steps})")
        self._clock = clock
        self.duration = duration
        self._interval = duration / steps
        self._started: Dict[Backend, float] = {}
        self._loop: Optional[LoopingCall] = None

    def begin(self, backend: Backend) -> None:
        """Start (or restart) ``backend``'s ramp from weight 1 now."""
        if self.duration <= 0:
            return
        self._started[backend] = self._clock.seconds()
        backend.effective_weight = 1
        if self._loop is None:
            self._loop = LoopingCall(self._step)
            self._loop.clock = self._clock
            self._loop.start(self._interval, now=False)

    def _step(self) -> None:
        now = self._clock.seconds()
        for backend, started in list(self._started.items()):
            backend.effective_weight = ramp_weight(backend.full_weight, now - started, self.duration)
            if backend.effective_weight == backend.full_weight:
                del self._started[backend]
        if not self._started:
            self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop is not None:
            self._loop.stop()
            self._loop = None

    def stopService(self) -> None:
        """Stop the loop and give every ramping backend its full weight."""
        Service.stopService(self)
        self._stop_loop()
        started, self._started = self._started, {}
        for backend in started:
            backend.effective_weight = backend.full_weight
