"""Backends: where an upstream server is, how much traffic it should take, and its live figures."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Tuple

from powerlb.latency import LatencyHistogram

#: Weighted balancers compare ``Backend.effective_weight``, which counts in 1/16ths of a
#: weight so that a slow start can ramp even a weight-1 backend. A power of two, so
#: scaling every weight by it changes no balancing decision.
WEIGHT_SCALE = 16


#: What an operator can set a backend to (admin API): ``enabled`` takes requests; ``draining`` takes
#: no new ones while those in flight finish and health checks go on; ``disabled`` (maintenance) is
#: draining without health checks.
BACKEND_STATES: Tuple[str, ...] = ("enabled", "draining", "disabled")

#: The kinds of upstream timeout counted in ``Backend.timeouts``.
TIMEOUT_KINDS = ("connect", "response", "idle")

#: A callback taking a backend (its return value is ignored), e.g. ``SlowStart.begin``.
BackendHook = Callable[["Backend"], object]


@dataclass(frozen=True)
class BackendSpec:
    """A configured backend: its URL, address, weight, whether it is a backup, and its scheme
    (``https`` backends are reached over TLS) (immutable)."""

    url: str
    host: str
    port: int
    weight: int = 1
    backup: bool = False
    scheme: str = "http"

    @property
    def id(self) -> str:
        """``host:port`` as in the URL (``[::1]:80`` for IPv6): unique among the backends."""
        return self.url.partition("://")[2]


class Backend:
    """One upstream server at run time: its spec, health and live counters.

    Counters are plain attributes mutated from the reactor thread only:
    ``in_flight`` goes up when a request is sent and down when it completes,
    fails or is aborted; ``requests``, ``failures``, ``ejections``,
    ``timeouts`` (by kind: connect, response, idle), ``queue_waits`` and
    ``queue_timeouts`` (the pool's wait queue), ``checks`` (health-check
    results: pass, fail) and ``latency`` (a :class:`LatencyHistogram` of
    proxied responses) only grow.

    A backend takes new requests while ``healthy`` (active health checks),
    not ``ejected`` (passive outlier detection), not ``draining`` and not
    ``disabled`` (both set through :meth:`set_state` by the admin API:
    requests in flight finish; a disabled backend is not health-checked
    either). ``weight`` is the configured weight (:meth:`set_weight` changes it at
    run time); ``effective_weight`` is what weighted balancers use, in
    :data:`WEIGHT_SCALE` units: ``weight * WEIGHT_SCALE`` except while a slow
    start ramps it up.
    """

    __slots__ = (
        "_spec",
        "backup",
        "checks",
        "disabled",
        "draining",
        "effective_weight",
        "ejected",
        "ejections",
        "failures",
        "healthy",
        "host",
        "id",
        "in_flight",
        "latency",
        "port",
        "queue_timeouts",
        "queue_waits",
        "requests",
        "scheme",
        "timeouts",
        "url",
        "weight",
    )

    def __init__(self, spec: BackendSpec) -> None:
        self._spec = spec
        self.url = spec.url
        #: ``host:port`` as in the URL (``[::1]:80`` for IPv6): the admin API's name for the backend,
        #: and the upstream address in the access log.
        self.id = spec.id
        self.host = spec.host
        self.port = spec.port
        self.scheme = spec.scheme
        self.weight = spec.weight
        self.backup = spec.backup
        self.effective_weight = self.full_weight
        self.healthy = True
        self.ejected = False
        self.draining = False
        self.disabled = False
        self.ejections = 0
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.timeouts: Dict[str, int] = dict.fromkeys(TIMEOUT_KINDS, 0)
        self.queue_waits = 0
        self.queue_timeouts = 0
        self.checks: Dict[str, int] = {"pass": 0, "fail": 0}
        self.latency = LatencyHistogram()

    @property
    def full_weight(self) -> int:
        """``effective_weight`` outside a slow start: the configured weight in WEIGHT_SCALE units."""
        return self.weight * WEIGHT_SCALE

    @property
    def state(self) -> str:
        """The operator's setting, one of :data:`BACKEND_STATES`."""
        return "disabled" if self.disabled else "draining" if self.draining else "enabled"

    def set_state(self, state: str) -> None:
        """Set ``draining`` and ``disabled`` for ``state`` (one of :data:`BACKEND_STATES`)."""
        if state not in BACKEND_STATES:
            raise ValueError(f"unknown backend state {state!r}; choose one of: {', '.join(BACKEND_STATES)}")
        self.draining = state == "draining"
        self.disabled = state == "disabled"

    def spec(self) -> BackendSpec:
        """The backend as configured now: its spec with the weight and backup flag it has now."""
        return replace(self._spec, weight=self.weight, backup=self.backup)

    def set_weight(self, weight: int) -> None:
        """Change the weight in place (admin endpoint, config reload), keeping a slow start coherent.

        Outside a slow start ``effective_weight`` becomes the new full weight at
        once; during one it is capped at the new full weight and the ramp goes
        on towards it (``SlowStart`` reads ``full_weight`` on every step).
        Balancers read ``effective_weight`` on every pick, so the next request
        sees the change.
        """
        ramping = self.effective_weight != self.full_weight
        self.weight = weight
        self.effective_weight = min(self.effective_weight, self.full_weight) if ramping else self.full_weight

    def __repr__(self) -> str:
        state = "up" if self.healthy else "down"
        extra = (
            (" backup" if self.backup else "")
            + (" ejected" if self.ejected else "")
            + (" draining" if self.draining else "")
            + (" disabled" if self.disabled else "")
        )
        return f"<Backend {self.url} weight={self.weight} {state}{extra} in_flight={self.in_flight}>"

    def snapshot(self) -> Dict[str, Any]:
        """The figures the stats endpoint shows for this backend."""
        return {
            "id": self.id,
            "url": self.url,
            "state": self.state,
            "weight": self.weight,
            "effective_weight": self.effective_weight / WEIGHT_SCALE,
            "backup": self.backup,
            "healthy": self.healthy,
            "ejected": self.ejected,
            "draining": self.draining,
            "disabled": self.disabled,
            "ejections": self.ejections,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "timeouts": dict(self.timeouts),
            "queue_waits": self.queue_waits,
            "queue_timeouts": self.queue_timeouts,
            "checks": dict(self.checks),
            **self.latency.snapshot(),
        }
