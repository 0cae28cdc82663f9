"""Backends: where an upstream server is, how much traffic it should take, and its live figures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict


@dataclass(frozen=True)
class BackendSpec:
    """A configured backend: its URL, address, weight, and whether it is a backup (immutable)."""

    url: str
    host: str
    port: int
    weight: int = 1
    backup: bool = False


class Backend:
    """One upstream server at run time: its spec, health and live counters.

    Counters are plain attributes mutated from the reactor thread only:
    ``in_flight`` goes up when a request is sent and down when it completes,
    fails or is aborted; ``requests`` and ``failures`` only grow.
    """

    __slots__ = ("failures", "healthy", "host", "in_flight", "port", "requests", "url", "weight")

    def __init__(self, spec: BackendSpec) -> None:
        self.url = spec.url
        self.host = spec.host
        self.port = spec.port
        self.weight = spec.weight
        self.healthy = True
        self.in_flight = 0
        self.requests = 0
        self.failures = 0

    def __repr__(self) -> str:
        state = "up" if self.healthy else "down"
        return f"<Backend {self.url} weight={self.weight} {state} in_flight={self.in_flight}>"

    def snapshot(self) -> Dict[str, Any]:
        """The figures the stats endpoint shows for this backend."""
        return {
            "url": self.url,
            "weight": self.weight,
            "healthy": self.healthy,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
        }
