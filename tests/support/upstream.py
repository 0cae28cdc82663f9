"""Fakes for the backend side: a parser-event :class:`Recorder`, a :class:`Pool` of upstream
connections on a fake reactor, and :class:`Failed`, a matcher for a RecordingSink's failure."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from powerlb.http11 import IUpgradeEvents
from powerlb.upstream import ProxyClientFactory, UpstreamConnection
from tests.support.backends import make_backend

Event = Tuple[Any, ...]


@implementer(IUpgradeEvents)
class Recorder:
    """An IUpgradeEvents (so also an IResponseEvents) that records every call."""

    def __init__(self) -> None:
        self.events: List[Event] = []
        #: How many responses came whole (``response_whole``).
        self.wholes = 0

    def response_interim(self, status: int, reason: bytes, headers: Any) -> None:
        self.events.append(("interim", status, reason, list(headers)))

    def response_head(self, status: int, reason: bytes, headers: Any) -> None:
        self.events.append(("head", status, reason, list(headers)))

    def response_body(self, data: bytes) -> None:
        assert data, "empty body pieces must not be reported"
        self.events.append(("body", data))

    def response_end(self, keep_alive: bool) -> None:
        self.events.append(("end", keep_alive))

    def response_whole(self, status: int, reason: bytes, headers: Any, body: bytes, keep_alive: bool) -> None:
        """Recorded as its parts (head, body when there is one, end); counted in :attr:`wholes`."""
        self.wholes += 1
        self.response_head(status, reason, headers)
        if body:
            self.response_body(body)
        self.response_end(keep_alive)

    def response_switched(self, reason: bytes, headers: Any, rest: bytes) -> None:
        self.events.append(("switched", reason, list(headers), rest))


class Failed:
    """Equals a RecordingSink ``("failed", error)`` event whose error has this status and retryability."""

    def __init__(self, status: int, retryable: bool) -> None:
        self.status = status
        self.retryable = retryable

    def __eq__(self, event: object) -> bool:
        return (
            isinstance(event, tuple)
            and len(event) == 2
            and event[0] == "failed"
            and (event[1].status, event[1].retryable) == (self.status, self.retryable)
        )

    def __repr__(self) -> str:
        return f"Failed({self.status}, {self.retryable})"


class Pool:
    """A factory on a fake reactor, and helpers to play the network's part."""

    def __init__(self, reactor: Optional[MemoryReactorClock] = None, **settings: Any) -> None:
        self.reactor = reactor or MemoryReactorClock()
        self.backend = make_backend()
        self.factory = ProxyClientFactory(self.backend, self.reactor, **settings)

    @property
    def connects(self) -> int:
        return len(self.reactor.tcpClients)

    def get(self, sink: Any, target: bytes = b"/x", idempotent: bool = True, method: bytes = b"GET") -> Any:
        return self.factory.request(method, target, [(b"host", b"example")], b"", sink, idempotent)

    def connect(self) -> Tuple[UpstreamConnection, StringTransport]:
        proto = self.factory.buildProtocol(None)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport
