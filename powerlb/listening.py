"""Listening and draining: the endpoints a powerlb accepts connections on.

:class:`Listener` listens on a Twisted server endpoint while it runs (a bad
port fails at start-up); :func:`drain` closes a site's client connections as
their requests end, aborting those left after a timeout.
"""

from __future__ import annotations

from typing import Any, List, Optional, Set

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure


class Listener(Service):
    """Listens on a Twisted server endpoint while running.

    ``port`` is the ``IListeningPort`` while listening (set at start-up for
    TCP, SSL and UNIX endpoints); :meth:`whenListening` waits for it.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: Optional[IListeningPort] = None
        self._started = False
        self._waiting: List[defer.Deferred[IListeningPort]] = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._started:
            return
        self._started = True
        failures: List[Failure] = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            # Raised synchronously so twistd and embedders see a bad port at start-up.
            failures[0].raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)

    def whenListening(self) -> defer.Deferred[IListeningPort]:
        """A Deferred firing with the ``IListeningPort`` once listening."""
        if self.port is not None:
            return defer.succeed(self.port)
        d: defer.Deferred[IListeningPort] = defer.Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Any:
        super().stopService()
        self._started = False
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


#: How often a draining site looks for connections whose requests have ended.
DRAIN_POLL_INTERVAL = 0.05


def drain(site: Any, clock: IReactorTime, timeout: float) -> defer.Deferred[None]:
    """Close a site's client connections as their requests end; abort those left after ``timeout``.

    ``site.channels`` is the set of its open ``HTTPChannel``\\ s and HTTP/2
    connections (the site keeps it up to date). Every :data:`DRAIN_POLL_INTERVAL`
    seconds a connection without a request (idle keep-alive) is closed, and one
    with requests is told to ``close_after_requests()`` (HTTP/1.1: their
    responses say ``Connection: close``; HTTP/2: new streams are refused).
    After ``timeout`` seconds the rest are aborted. The result fires once no connection is left.
    """
    done: defer.Deferred[None] = defer.Deferred()
    deadline = clock.seconds() + timeout
    closing: Set[Any] = set()

    def step() -> None:
        channels = site.channels
        if not channels:
            loop.stop()
            return
        overdue = clock.seconds() >= deadline
        for channel in list(channels):
            if overdue:
                channel.transport.abortConnection()
            elif not channel.requests:
                if channel not in closing:
                    closing.add(channel)
                    channel.loseConnection()
            else:
                channel.close_after_requests()

    loop = LoopingCall(step)
    loop.clock = clock
    loop.start(DRAIN_POLL_INTERVAL, now=True).addBoth(lambda _: done.callback(None))
    return done
