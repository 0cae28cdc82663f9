"""``twistd powerlb``: the command-line options and the service they make."""

from __future__ import annotations

from twisted.application.service import IService

from powerlb.config import Options

__all__ = ["Options", "makeService"]


def makeService(options: Options) -> IService:
    """The service ``twistd powerlb`` runs, from parsed options."""
    from powerlb import makeService as make_powerlb

    return make_powerlb(options.config)
