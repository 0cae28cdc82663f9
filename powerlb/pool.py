"""A pool at run time: one set of backends and everything that serves them.

A :class:`Pool` is built from one :class:`~powerlb.settings.PoolConfig`'s
settings: its backends, balancer, health checker, outlier ejector, slow start,
an upstream connection pool (:class:`~powerlb.upstream.ProxyClientFactory`)
per backend, the :class:`~powerlb.dispatch.Dispatcher` that sends requests to
them, the sticky cookie and DNS discovery. It is a ``MultiService`` child of
:class:`~powerlb.service.PowerLBService`, and the runtime API's
:class:`~powerlb.control.BackendControl`. Requests reach it through a
:class:`~powerlb.plan.RequestPlan` (:mod:`powerlb.router`).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from twisted.application.service import MultiService
from twisted.logger import Logger

from powerlb.backend import Backend, BackendSpec
from powerlb.balancing import IBalancer, make_balancer
from powerlb.dispatch import Dispatcher
from powerlb.health import CheckKind, HealthChecker, SlowStart, backend_probe
from powerlb.outlier import OutlierEjector
from powerlb.reload import diff_backends
from powerlb.settings import Config
from powerlb.stats import Counters
from powerlb.sticky import StickyCookie
from powerlb.tls import BackendTLS
from powerlb.upstream import ProxyClientFactory

if TYPE_CHECKING:
    from powerlb.discovery import DnsDiscovery

log = Logger()

#: Config attributes a new balancer is built for when a reload changes one of them.
_BALANCER_SETTINGS = ("algorithm", "hash_key", "hash_balance_factor")


class Pool(MultiService):
    """One named pool of backends with its balancer, health checks, outlier ejection, slow start,
    upstream connections, dispatcher, sticky cookie and DNS discovery (``config``: its settings)."""

    def __init__(self, name: str, config: Config, reactor: Any, counters: Counters) -> None:
        super().__init__()
        self.name = name
        self.config = config
        self.reactor = reactor
        self.counters = counters
        self.backends = [Backend(spec) for spec in config.backends]
        self.backend_tls = BackendTLS(config.backend_ca_file)
        self.sticky = StickyCookie(config.sticky_cookie) if config.sticky_cookie else None
        self.balancer = self._make_balancer(config)
        self.clients: Dict[Backend, ProxyClientFactory] = {
            backend: self._make_client(backend) for backend in self.backends
        }
        self.slow_start = SlowStart(reactor, config.slow_start)
        self.slow_start.setServiceParent(self)
        self.outliers: Optional[OutlierEjector] = None
        if config.outlier_failures > 0:
            self.outliers = OutlierEjector(
                reactor,
                self.backends,
                config.outlier_failures,
                config.outlier_backoff,
                max_ejection=config.outlier_max_ejection,
                statuses=config.outlier_statuses,
                counters=counters,
                on_readmit=self.slow_start.begin,
            )
            self.outliers.setServiceParent(self)
        check_kind = CheckKind(config.health_check, config.health_path)
        #: The health check of one backend (None with ``health-check: off``).
        self.probe = backend_probe(reactor, check_kind, config.health_timeout, self.backend_tls.creator_for)
        self.health = HealthChecker(
            self.backends,
            self.probe,
            reactor,
            config.health_interval,
            config.health_timeout,
            rise=config.health_rise,
            fall=config.health_fall,
            on_pass=self.outliers.health_passed if self.outliers is not None else None,
            on_up=self.slow_start.begin,
            kind=check_kind,
        )
        self.health.setServiceParent(self)
        #: Backends from DNS names (``dns``, ``srv``), or None.
        self.discovery: Optional[DnsDiscovery] = None
        if config.dns or config.srv:
            # Imported here: discovery brings twisted.names.
            from powerlb.discovery import discovery_for

            self.discovery = discovery_for(config, reactor, self, self.probe)
            self.discovery.setServiceParent(self)
        self.dispatcher = Dispatcher(
            self.balancer,
            self.clients,
            retries=config.retries,
            outliers=self.outliers,
            counters=counters,
            tunnel_idle_timeout=config.tunnel_idle_timeout,
        )

    def summary(self) -> Dict[str, Any]:
        """The pool's entry in the stats' ``pools``: name, algorithm, backends and how many are up."""
        return {
            "name": self.name,
            "algorithm": self.config.algorithm,
            "backends": len(self.backends),
            "healthy": sum(1 for backend in self.backends if backend.healthy),
        }

    def connections(self, backend: Backend) -> Dict[str, int]:
        """The upstream connection figures of one of the pool's backends (for the stats)."""
        client = self.clients[backend]
        return {
            "open_connections": client.open_connections,
            "idle_connections": client.idle_connections,
            "queued": client.queued,
        }

    def close(self) -> None:
        """Close the upstream connections: idle ones now, busy ones as their requests end."""
        for client in self.clients.values():
            client.close()

    def reload(self, config: Config) -> None:
        """Apply the pool's re-read settings (already passed through :func:`~powerlb.reload.reloaded`).

        Backends are matched by URL (see :func:`diff_backends`): new ones get an
        upstream pool and start healthy, removed ones leave the balancer at once
        and their connections close as their in-flight requests end, re-weighted
        ones change in place and keep their counters. A new ``algorithm``,
        ``hash-key`` or ``hash-balance-factor`` gets a new balancer; ``retries``
        applies to the next request. Backends found by DNS discovery are not part
        of ``config.backends`` and stay, unless the new configuration names one:
        that one becomes static.
        """
        old = self.config
        self.config = config
        added, removed, reweighted = diff_backends(old.backends, config.backends)
        by_url = {backend.url: backend for backend in self.backends}
        for spec in removed:
            self.remove_backend(by_url.pop(spec.url))
            log.info("reload: backend {url} removed from pool {pool}", url=spec.url, pool=self.name)
        for spec in reweighted:
            backend = by_url[spec.url]
            backend.set_weight(spec.weight)
            backend.backup = spec.backup
            log.info(
                "reload: backend {url} of pool {pool} now has weight {weight}",
                url=spec.url,
                pool=self.name,
                weight=spec.weight,
            )
        for spec in added:
            if spec.url in by_url:  # found by DNS discovery: now a static backend
                backend = by_url[spec.url]
                if self.discovery is not None:
                    self.discovery.release(backend)
                backend.set_weight(spec.weight)
                backend.backup = spec.backup
            else:
                by_url[spec.url] = self.add_backend(spec)
            log.info("reload: backend {url} added to pool {pool}", url=spec.url, pool=self.name)
        static = [by_url[spec.url] for spec in config.backends]
        self._set_backends([*static, *(b for b in self.backends if b not in static and self._discovered(b))])
        if any(getattr(config, name) != getattr(old, name) for name in _BALANCER_SETTINGS):
            self.balancer = self._make_balancer(config)
            self.dispatcher.balancer = self.balancer
            log.info(
                "reload: pool {pool}'s algorithm is now {algorithm} (hash-key {hash_key}, "
                "hash-balance-factor {factor})",
                pool=self.name,
                algorithm=config.algorithm,
                hash_key=config.hash_key,
                factor=config.hash_balance_factor,
            )
        self.dispatcher.retries = config.retries
        log.info(
            "config reloaded: {added} backends added, {removed} removed, {reweighted} re-weighted"
            " (pool {pool})",
            pool=self.name,
            added=len(added),
            removed=len(removed),
            reweighted=len(reweighted),
        )

    def add_backend(self, spec: BackendSpec) -> Backend:
        """Start sending requests to a new backend (reload, admin API); it starts healthy.

        Its URL must not be one of the backends' already. ``config.backends``
        follows, so the effective config and the next reload see it.
        """
        backend = Backend(spec)
        self.clients[backend] = self._make_client(backend)
        self._set_backends([*self.backends, backend])
        return backend

    def remove_backend(self, backend: Backend) -> None:
        """Take a backend out at once (reload, admin API): it gets no new requests, those in
        flight finish and its connections close as they end."""
        self._set_backends([other for other in self.backends if other is not backend])
        self.clients.pop(backend).close()

    def set_backend_weight(self, backend: Backend, weight: int) -> None:
        """Change a backend's weight now (admin API, see ``Backend.set_weight``); config.backends follows."""
        backend.set_weight(weight)
        self._set_backends(self.backends)

    def _set_backends(self, backends: List[Backend]) -> None:
        """Make ``backends`` the live set, in order: the list itself (shared with the health checker and
        the stats), the balancer's tiers and ``config.backends``."""
        self.backends[:] = backends
        self.health.set_backends(self.backends)
        self.balancer.set_backends(self.backends)
        configured = tuple(b.spec() for b in self.backends if not self._discovered(b))
        self.config = dataclasses.replace(self.config, backends=configured)

    def _discovered(self, backend: Backend) -> bool:
        """Whether DNS discovery added ``backend`` (it is then not in ``config.backends``)."""
        return self.discovery is not None and self.discovery.owns(backend)

    def _make_balancer(self, config: Config) -> IBalancer:
        """The balancer ``config`` asks for over the current backends (at start, and on reload)."""
        return make_balancer(
            config.algorithm,
            self.backends,
            hash_key=config.hash_key,
            balance_factor=config.hash_balance_factor,
            sticky=self.sticky,
        )

    def _make_client(self, backend: Backend) -> ProxyClientFactory:
        """The upstream pool of one backend (at start, and for each one added later)."""
        config = self.config
        return ProxyClientFactory(
            backend,
            self.reactor,
            connect_timeout=config.connect_timeout,
            response_timeout=config.response_timeout,
            idle_timeout=config.idle_timeout,
            keepalive_timeout=config.keepalive_timeout,
            max_idle=config.keepalive_max_idle,
            max_connections=config.backend_max_connections,
            queue_timeout=config.backend_queue_timeout,
            tls=self.backend_tls.creator_for(backend),
        )
