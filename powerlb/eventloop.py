"""powerlb's reactor: Twisted's epoll reactor, each I/O event handled without a log context.

Twisted's reactors hand every read or write event to its handler through
``log.callWithLogger``: the handler's ``logPrefix()`` is asked for, and a
``{"system": prefix}`` context is pushed and popped around the call, so that a
legacy log line written meanwhile says which connection it came from. On a
proxied request (two events) that is about 8 % of powerlb's instructions, and
16 % of a cache hit's (one event): ``bench/run.py --rows callgrind``.
:class:`DirectEPollReactor` calls the handler (``_doReadOrWrite``, which
already logs a failing ``doRead``/``doWrite`` and drops the connection)
directly; a log line written during an event says ``-`` where it said
``ProxyChannel,5,127.0.0.1``.

``twistd powerlb``, ``lb.tac`` and the worker processes run on it when no
reactor was chosen (``twistd --reactor NAME`` keeps its choice) and epoll is
there (Linux). An application that embeds powerlb keeps its own reactor, or
calls :func:`install` before anything imports ``twisted.internet.reactor``.
"""

from __future__ import annotations

import errno
import sys
from typing import Optional

from twisted.python import log

try:
    from twisted.internet.epollreactor import EPollReactor
except ImportError:  # no epoll on this platform
    EPollReactor = None  # type: ignore[assignment,misc]


if EPollReactor is not None:

    class DirectEPollReactor(EPollReactor):
        """The epoll reactor, each event handled without the per-event log context (module docstring)."""

        def doPoll(self, timeout: Optional[float]) -> None:
            try:
                events = self._poller.poll(-1 if timeout is None else timeout, len(self._selectables))
            except OSError as err:
                if err.errno == errno.EINTR:
                    return
                raise
            selectables = self._selectables
            handle = self._doReadOrWrite
            for fd, event in events:
                selectable = selectables.get(fd)
                if selectable is not None:
                    try:
                        handle(selectable, fd, event)
                    except BaseException:  # what callWithLogger would have logged; the loop goes on
                        log.err(None, "Unexpected error handling an I/O event")

        doIteration = doPoll


def install() -> None:
    """Install :class:`DirectEPollReactor` as the global reactor (Twisted's ``install()`` protocol)."""
    from twisted.internet.main import installReactor

    installReactor(DirectEPollReactor())


def install_unless_chosen() -> bool:
    """Install :class:`DirectEPollReactor` unless a reactor is installed already or epoll is missing:
    whether it did."""
    if EPollReactor is None or "twisted.internet.reactor" in sys.modules:
        return False
    install()
    return True
