"""Signals for the top-level process: SIGHUP re-reads the configuration, SIGUSR1 reopens logs.

Signal handlers are process-wide, so these are for ``twistd powerlb``,
``lb.tac`` and a worker process; embedders that run several instances call
``reload`` and ``reopen_logs`` themselves.
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Protocol

from twisted.application.service import Service
from twisted.logger import Logger

from powerlb.config import ConfigError
from powerlb.reload import ConfigSource
from powerlb.settings import Config

log = Logger()


class Reloadable(Protocol):
    """What :class:`ReloadOnSighup` hands a new configuration to."""

    def reload(self, config: Config) -> None:
        """Apply ``config`` (the running one stays where it does not fit)."""


class OnSignal(Service):
    """While running, the signal ``signum`` calls ``action`` on the reactor thread, then the
    handler it replaced when that is a function (e.g. twistd rotating its ``--logfile`` on SIGUSR1).

    For the top-level process only (``twistd powerlb``, ``lb.tac``, a
    worker): signal handlers are process-wide, so embedders that run several
    instances call the actions themselves.
    """

    def __init__(self, signum: int, action: Callable[[], Any], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.signum = signum
        self.action = action
        self.reactor = reactor
        self._previous: Any = None

    def startService(self) -> None:
        super().startService()
        self._previous = signal.signal(self.signum, self._signalled)

    def stopService(self) -> None:
        if self.running:
            signal.signal(self.signum, self._previous if self._previous is not None else signal.SIG_DFL)
        super().stopService()

    def _signalled(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self.action)
        if callable(self._previous):
            self._previous(signum, frame)


class ReloadOnSighup(OnSignal):
    """While running, SIGHUP re-reads ``source`` and hands the result to ``target.reload``.

    A bad configuration is logged in one line naming the setting, and the
    running one is kept.
    """

    def __init__(self, target: Reloadable, source: ConfigSource, reactor: Any = None) -> None:
        super().__init__(signal.SIGHUP, self.reload, reactor)
        self.target = target
        self.source = source

    def reload(self) -> None:
        """Re-read the configuration and apply it, or log why it cannot be."""
        where = self.source.path or "the command line"
        log.info("SIGHUP: reloading the configuration from {where}", where=where)
        try:
            config = self.source.load()
        except ConfigError as err:
            log.error("reload failed, keeping the running configuration: {error}", error=str(err))
            return
        self.target.reload(config)


def reload_on_sighup(service: Any, source: ConfigSource) -> None:
    """Make ``service`` (from :func:`powerlb.makeService`) re-read ``source`` on SIGHUP.

    A worker supervisor also passes ``source`` to its workers (see
    :attr:`powerlb.workers.WorkerSupervisor.config_source`), which re-read it
    themselves when it forwards SIGHUP to them.
    """
    ReloadOnSighup(service, source, service.reactor).setServiceParent(service)
