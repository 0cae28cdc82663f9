"""The composition root: one powerlb instance as a Twisted ``MultiService``.

:class:`PowerLBService` builds and wires everything of one instance —
backends, balancer, upstream pools, cache, health checks, listeners — and
keeps no global state, so several can run in one process. ``twistd powerlb``,
``lb.tac`` and embedders all build it through :func:`powerlb.makeService`.

Stopping drains (see :func:`powerlb.listening.drain`): the listeners stop at
once, idle client connections are closed, in-flight requests get
``drain_timeout`` seconds to finish, then whatever is left is cut and the
upstream pools are closed. :meth:`PowerLBService.reload` applies a re-read
configuration (backends added, removed or re-weighted, the algorithm,
retries, the drain timeout; see :mod:`powerlb.reload`) without dropping
in-flight requests; :class:`powerlb.signals.ReloadOnSighup` does that on
SIGHUP for the top-level ``twistd`` runs (embedders call ``reload``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger

from powerlb.accesslog import AccessLog
from powerlb.backend import Backend, BackendSpec
from powerlb.balancing import IBalancer, make_balancer
from powerlb.cache import CacheSweeper, LRUCache
from powerlb.caching import CacheLayer
from powerlb.dispatch import Dispatcher
from powerlb.health import CheckKind, HealthChecker, SlowStart, backend_probe
from powerlb.listening import Listener, drain
from powerlb.outcomes import Outcomes
from powerlb.outlier import OutlierEjector
from powerlb.plan import SinglePool
from powerlb.proxy import ProxyResource
from powerlb.reload import diff_backends, reloaded
from powerlb.server import ProxySite, QuietSite
from powerlb.settings import Config
from powerlb.stats import Counters, snapshot
from powerlb.sticky import StickyCookie
from powerlb.tls import BackendTLS
from powerlb.upstream import ProxyClientFactory
from powerlb.values import endpoint_kind

if TYPE_CHECKING:
    from powerlb.discovery import DnsDiscovery

log = Logger()

#: Config attributes a new balancer is built for when a reload changes one of them.
_BALANCER_SETTINGS = ("algorithm", "hash_key", "hash_balance_factor")


class PowerLBService(MultiService):
    """A whole powerlb: proxy listener, optional admin listener, health checks, cache and pools."""

    def __init__(
        self, config: Config, reactor: Any = None, listen_endpoint: Optional[IStreamServerEndpoint] = None
    ) -> None:
        """``listen_endpoint`` replaces ``config.listen`` (a worker adopts its parent's socket)."""
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.config = config
        self.reactor = reactor
        self.backends = [Backend(spec) for spec in config.backends]
        self.backend_tls = BackendTLS(config.backend_ca_file)
        self.sticky = StickyCookie(config.sticky_cookie) if config.sticky_cookie else None
        self.balancer = self._make_balancer(config)
        self.clients: Dict[Backend, ProxyClientFactory] = {
            backend: self._make_client(backend) for backend in self.backends
        }
        self.counters = Counters()
        self.cache: Optional[LRUCache] = None
        if config.cache_size > 0:
            self.cache = LRUCache(
                config.cache_size,
                config.cache_max_object,
                clock=reactor,
                keep_stale=config.cache_grace,
            )
            CacheSweeper(self.cache, reactor, config.cache_sweep_interval).setServiceParent(self)
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
                counters=self.counters,
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
            counters=self.counters,
            tunnel_idle_timeout=config.tunnel_idle_timeout,
        )
        cache_layer = None
        if self.cache is not None:
            cache_layer = CacheLayer(
                self.cache,
                reactor,
                self.counters,
                config.cache_max_object,
                targeted=config.cache_targeted_header,
                grace=config.cache_grace,
                lock_timeout=config.cache_lock_timeout,
                purge_allow=config.purge_allow,
            )
        #: The shared second cache tier and the change bus (None without ``redis``).
        self.redis: Optional[Any] = None
        self.bus: Optional[Any] = None
        changes = None if config.redis is None else self._join_cluster(config, cache_layer)
        planner = SinglePool(self.dispatcher, self.sticky)
        resource = ProxyResource(planner, cache_layer, self.counters, config.request_id_header.encode())
        if listen_endpoint is None:
            listen_endpoint = serverFromString(reactor, config.listen)
        #: The access log (None when off); started before and stopped after the listeners' drain.
        self.access_log: Optional[AccessLog] = None
        if config.access_log is not None:
            self.access_log = AccessLog(config.access_log, config.access_log_format, reactor)
        self.outcomes = Outcomes(reactor, None if self.access_log is None else self.access_log.logger)
        site = ProxySite(resource, reactor, config, self.outcomes)
        if config.http2 and endpoint_kind(config.listen) == "ssl":
            site.h2_protocol = _http2_connections(site)
        if cache_layer is not None:
            site.fast_answer = resource.fast_response
        self.proxy_listener = Listener(listen_endpoint, site)
        self.proxy_listener.setServiceParent(self)
        self.admin_listener: Optional[Listener] = None
        if config.admin is not None:
            # Imported here: the admin listener brings the API, the dashboard and prometheus_client.
            from powerlb.admin import admin_root

            admin = admin_root(
                self.stats, lambda: self.config, self, cache_layer, config.admin_token, changes
            )
            self.admin_listener = Listener(serverFromString(reactor, config.admin), QuietSite(admin, reactor))
            self.admin_listener.setServiceParent(self)

    def stats(self) -> Dict[str, Any]:
        """The live figures shown by ``/api/v1/stats``."""
        return snapshot(
            self.backends,
            self.counters,
            self.cache,
            self.health.last_result,
            lambda b: {
                "open_connections": self.clients[b].open_connections,
                "idle_connections": self.clients[b].idle_connections,
                "queued": self.clients[b].queued,
            },
            self.outcomes.snapshot(),
            None if self.bus is None else self.bus.stats(),
        )

    def privilegedStartService(self) -> None:
        if self.access_log is not None:
            self.access_log.privilegedStartService()
        super().privilegedStartService()

    def startService(self) -> None:
        if self.access_log is not None and not self.access_log.running:
            self.access_log.startService()
        super().startService()

    def reopen_logs(self) -> None:
        """Open the access log file again, if there is one (after logrotate moved it)."""
        if self.access_log is not None:
            self.access_log.reopen()

    def stopService(self) -> defer.Deferred:
        """Stop listening at once, drain the client connections (see :func:`drain`), close the pools.

        The result fires when every client connection is closed, at most
        ``drain_timeout`` seconds (plus a poll interval) later.
        """
        stopped = defer.maybeDeferred(super().stopService)
        listeners = [self.proxy_listener, self.admin_listener]
        drained = [
            drain(listener.factory, self.reactor, self.config.drain_timeout)
            for listener in listeners
            if listener is not None
        ]
        d = defer.gatherResults([stopped, *drained], consumeErrors=True)

        def close_pools(result: Any) -> Any:
            for client in self.clients.values():
                client.close()
            if self.access_log is not None and self.access_log.running:
                self.access_log.stopService()
            return result

        return d.addBoth(close_pools)

    def reload(self, config: Config) -> None:
        """Apply a re-read configuration without dropping in-flight requests.

        Backends are matched by URL (see :func:`diff_backends`): new ones get a
        pool and start healthy, removed ones leave the balancer at once and
        their pool closes as their in-flight requests end, re-weighted ones
        change in place and keep their counters. A new ``algorithm``,
        ``hash-key`` or ``hash-balance-factor`` gets a new balancer;
        ``retries`` applies to the next request and ``drain_timeout`` to the
        next stop. A change to any other setting is logged as needing a
        restart and ignored. Backends found by DNS discovery are not part of
        ``config.backends`` and stay, unless the new configuration names one:
        that one becomes static.
        """
        old = self.config
        self.config = reloaded(old, config)
        added, removed, reweighted = diff_backends(old.backends, config.backends)
        by_url = {backend.url: backend for backend in self.backends}
        for spec in removed:
            self.remove_backend(by_url.pop(spec.url))
            log.info("reload: backend {url} removed", url=spec.url)
        for spec in reweighted:
            backend = by_url[spec.url]
            backend.set_weight(spec.weight)
            backend.backup = spec.backup
            log.info("reload: backend {url} now has weight {weight}", url=spec.url, weight=spec.weight)
        for spec in added:
            if spec.url in by_url:  # found by DNS discovery: now a static backend
                backend = by_url[spec.url]
                if self.discovery is not None:
                    self.discovery.release(backend)
                backend.set_weight(spec.weight)
                backend.backup = spec.backup
            else:
                by_url[spec.url] = self.add_backend(spec)
            log.info("reload: backend {url} added", url=spec.url)
        static = [by_url[spec.url] for spec in config.backends]
        self._set_backends([*static, *(b for b in self.backends if b not in static and self._discovered(b))])
        if any(getattr(config, name) != getattr(old, name) for name in _BALANCER_SETTINGS):
            self.balancer = self._make_balancer(config)
            self.dispatcher.balancer = self.balancer
            log.info(
                "reload: algorithm is now {algorithm} (hash-key {hash_key}, hash-balance-factor {factor})",
                algorithm=config.algorithm,
                hash_key=config.hash_key,
                factor=config.hash_balance_factor,
            )
        self.dispatcher.retries = config.retries
        log.info(
            "config reloaded: {added} backends added, {removed} removed, {reweighted} re-weighted",
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
        flight finish and its pool closes as they end."""
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

    def _join_cluster(self, config: Config, cache_layer: Optional[CacheLayer]) -> Any:
        """Start the Redis tier and change bus (see :mod:`powerlb.redistier`); the API's control."""
        from powerlb.redistier import cluster_for

        self.redis, self.bus, changes = cluster_for(config, self, cache_layer, self.reactor)
        self.redis.setServiceParent(self)
        self.bus.setServiceParent(self)
        return changes

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


def _http2_connections(site: ProxySite) -> Optional[Callable[[], Any]]:
    """What makes the HTTP/2 connections of a TLS listener, or None without ``twisted[http2]``."""
    try:
        from powerlb.http2 import ProxyH2Connection
    except ImportError:
        return None  # HTTP/1.1 only
    return lambda: ProxyH2Connection(site)
