"""Reloading: what a re-read configuration changes, and where it is re-read from.

Pure decisions for :meth:`powerlb.service.PowerLBService.reload` and
:meth:`powerlb.workers.WorkerSupervisor.reload`: :func:`reloaded` keeps the
settings that need a restart, :func:`diff_backends` matches backends by URL;
:class:`ConfigSource` builds the configuration again (see :mod:`powerlb.signals`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.logger import Logger

from powerlb.backend import BackendSpec
from powerlb.config import build_config
from powerlb.settings import SETTINGS, Config

log = Logger()


#: Config attributes :meth:`~powerlb.service.PowerLBService.reload` applies; any other needs a restart.
RELOADABLE = frozenset(
    {"backends", "algorithm", "hash_key", "hash_balance_factor", "retries", "drain_timeout"}
)


def reloaded(old: Config, new: Config, scope: Optional[str] = None, where: str = "") -> Config:
    """What a reload from ``old`` to ``new`` runs with: ``new``, but every setting outside
    :data:`RELOADABLE` kept from ``old`` (each such change is logged as needing a restart).

    ``scope`` limits the logging: ``"pool"`` to the pool settings (``old`` and ``new`` are a
    pool's, ``where`` its prefix, e.g. ``pools.web.``), ``"top"`` to the others (each pool logs
    its own), None logs every one."""
    kept: Dict[str, Any] = {}
    for setting in SETTINGS:
        before, after = getattr(old, setting.attr), getattr(new, setting.attr)
        if setting.attr not in RELOADABLE and after != before:
            kept[setting.attr] = before
            if scope is not None and (setting.scope == "pool") != (scope == "pool"):
                continue
            log.warn(
                "reload: {setting} changed, which needs a restart; still using {value}",
                setting=where + setting.key,
                value="off" if before is None else setting.show(before),
            )
    return dataclasses.replace(new, **kept)


def diff_backends(
    old: Sequence[BackendSpec], new: Sequence[BackendSpec]
) -> Tuple[List[BackendSpec], List[BackendSpec], List[BackendSpec]]:
    """What a reload changes, keyed by URL: ``(added, removed, reweighted)``.

    ``added`` and ``reweighted`` are specs from ``new`` (``reweighted``: the
    URL was there with another weight or backup flag), ``removed`` specs
    from ``old``; each list is in its configuration's order.
    """
    old_by_url = {spec.url: spec for spec in old}
    new_urls = {spec.url for spec in new}
    added = [spec for spec in new if spec.url not in old_by_url]
    removed = [spec for spec in old if spec.url not in new_urls]
    reweighted = [
        spec
        for spec in new
        if spec.url in old_by_url
        and (spec.weight, spec.backup) != (old_by_url[spec.url].weight, old_by_url[spec.url].backup)
    ]
    return added, removed, reweighted


@dataclasses.dataclass(frozen=True)
class ConfigSource:
    """Where a running powerlb's configuration comes from, so SIGHUP can build it again.

    ``path`` is the YAML file (or None), ``cli`` the command-line options
    (their names as :func:`~powerlb.config.build_config` takes them), which
    win over the file as at start-up, and ``overrides`` Config fields set
    after building (a worker's ``workers=1, admin=None``). Picklable.
    """

    path: Optional[str]
    cli: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def load(self) -> Config:
        """Read and validate the configuration again; a bad one raises ConfigError."""
        return dataclasses.replace(build_config(self.cli, self.path), **self.overrides)
