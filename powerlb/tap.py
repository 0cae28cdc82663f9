"""``twistd powerlb``: the command-line options and the service they make."""

from __future__ import annotations

import signal
import sys
from typing import Any, Optional

from twisted.application.service import IService
from twisted.python import usage

from powerlb import __version__
from powerlb.config import Options as ConfigOptions

__all__ = ["Options", "makeService"]


class Options(ConfigOptions):
    """powerlb's options as twistd parses them: a bad setting exits non-zero with one line.

    Twisted before 26 catches a ``UsageError`` from a plugin without setting
    an exit status, so it is turned into ``SystemExit`` here.
    """

    def parseOptions(self, options: Optional[Any] = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as err:
            raise SystemExit(f"twistd powerlb: {err} (see twistd powerlb --help)") from None

    def opt_version(self) -> None:
        """Print powerlb's and Twisted's versions and exit."""
        from twisted import copyright

        print(f"powerlb {__version__} (Twisted {copyright.version})")
        sys.exit(0)


def makeService(options: Options) -> IService:
    """The service ``twistd powerlb`` runs, from parsed options; SIGHUP re-reads ``--config``,
    SIGUSR1 reopens the ``--access-log`` file.

    On a reload the command-line options still win over the file.
    """
    from powerlb import makeService as make_powerlb
    from powerlb.service import ConfigSource, OnSignal, reload_on_sighup

    service = make_powerlb(options.config)
    cli = {name: value for name, value in options.items() if name != "config"}
    reload_on_sighup(service, ConfigSource(options["config"], cli))
    if options.config.access_log is not None:
        OnSignal(signal.SIGUSR1, service.reopen_logs, service.reactor).setServiceParent(service)
    return service
