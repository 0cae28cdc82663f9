"""``twistd powerlb``: the command-line options and the service they make."""

from __future__ import annotations

import signal
import sys
from typing import Any, List, Optional

from twisted.application.service import IService
from twisted.python import usage

if "twisted.web.http" not in sys.modules:
    # twistd's powerlb process only (an embedding application keeps Twisted's defaults): twisted.web.http
    # imports Twisted's HTTP/2 (h2, hpack, hyperframe: 1.4 MiB) whenever h2 is installed, for its own
    # ALPN switch, which powerlb's channels never use; powerlb.http2 imports it itself, for TLS
    # listeners only. Here twisted.web.http is imported once without it.
    sys.modules["twisted.web._http2"] = None  # type: ignore[assignment]
    try:
        import twisted.web.http  # noqa: F401
    finally:
        del sys.modules["twisted.web._http2"]

from powerlb import makeService as make_powerlb
from powerlb._version import __version__
from powerlb.config import ConfigError, build_config
from powerlb.eventloop import install_unless_chosen
from powerlb.reload import ConfigSource
from powerlb.settings import BY_NAME, SETTINGS, Config
from powerlb.signals import OnSignal, reload_on_sighup

__all__ = ["Options", "makeService"]


class Options(usage.Options):
    """The command-line options of ``twistd powerlb``, one per row of the settings table;
    after parsing, ``self.config`` is the Config. A bad setting exits non-zero with one line.

    Twisted before 26 catches a ``UsageError`` from a plugin without setting
    an exit status, so it is turned into ``SystemExit`` here.
    """

    synopsis = "[options]"
    optParameters: List[List[Any]] = [
        [setting.name, None, None, setting.describe()]
        for setting in SETTINGS
        if setting.cli and not setting.many
    ] + [["config", None, None, "YAML file with the same keys (command-line options win)"]]

    def __init__(self) -> None:
        super().__init__()
        self["backend"] = []
        self["dns"] = []
        self.config: Optional[Config] = None

    def opt_backend(self, value: str) -> None:
        self["backend"].append(value)

    opt_backend.__doc__ = BY_NAME["backend"].describe()

    def opt_dns(self, value: str) -> None:
        self["dns"].append(value)

    opt_dns.__doc__ = BY_NAME["dns"].describe()

    def postOptions(self) -> None:
        """Build ``self.config``; a bad setting becomes a one-line UsageError."""
        cli = {name: value for name, value in self.items() if name != "config"}
        try:
            self.config = build_config(cli, self["config"])
        except ConfigError as err:
            raise usage.UsageError(str(err)) from err

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

    On a reload the command-line options still win over the file. Unless ``twistd --reactor`` chose
    one, the reactor is :class:`~powerlb.eventloop.DirectEPollReactor` (twistd installs its default
    only after this).
    """
    install_unless_chosen()
    config = options.config
    assert config is not None  # built by Options.postOptions
    service = make_powerlb(config)
    cli = {name: value for name, value in options.items() if name != "config"}
    reload_on_sighup(service, ConfigSource(options["config"], cli))
    if config.access_log is not None:
        OnSignal(signal.SIGUSR1, service.reopen_logs, service.reactor).setServiceParent(service)
    return service
