"""powerlb: an HTTP load balancer and caching reverse proxy on Twisted.

Embed it in another Twisted application with :func:`makeService`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Union

from powerlb._version import __version__
from powerlb.config import ConfigError, config_from_mapping
from powerlb.settings import Config

if TYPE_CHECKING:
    from powerlb.service import PowerLBService
    from powerlb.workers import WorkerSupervisor

__all__ = ["Config", "ConfigError", "__version__", "makeService"]


def makeService(
    config: Union[Config, Mapping[str, Any]], reactor: Any = None
) -> Union[PowerLBService, WorkerSupervisor]:
    """Build one powerlb instance as an ``IService`` (a ``MultiService``).

    ``config`` is a :class:`Config` or a mapping with the YAML keys, e.g.
    ``{"listen": "tcp:8080", "backends": ["http://127.0.0.1:9001"]}``; a bad
    one raises :class:`ConfigError`. ``reactor`` defaults to the global one.
    Nothing is shared between instances. With ``workers`` > 1 the service
    supervises that many worker processes (see :mod:`powerlb.workers`).
    """
    if not isinstance(config, Config):
        config = config_from_mapping(config)
    # Imported here: ``import powerlb`` (and ``twistd powerlb --help``) stays without the service modules.
    if config.workers > 1:
        from powerlb.workers import WorkerSupervisor

        return WorkerSupervisor(config, reactor)
    from powerlb.service import PowerLBService

    return PowerLBService(config, reactor)
