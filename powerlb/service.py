"""The composition root: one powerlb instance as a Twisted ``MultiService``.

:class:`PowerLBService` builds and wires everything of one instance — the
pools (:class:`~powerlb.pool.Pool`: backends, balancer, health checks,
upstream connections), the router (:class:`~powerlb.router.Router`, the
requests' :class:`~powerlb.plan.IPlanner`), the cache, the listeners — and
keeps no global state, so several can run in one process. ``twistd powerlb``,
``lb.tac`` and embedders all build it through :func:`powerlb.makeService`.

Stopping drains (see :func:`powerlb.listening.drain`): the listeners stop at
once, idle client connections are closed, in-flight requests get
``drain_timeout`` seconds to finish, then whatever is left is cut and the
upstream pools are closed. :meth:`PowerLBService.reload` applies a re-read
configuration (pools and routes; in each pool backends added, removed or
re-weighted, the algorithm, retries; the drain timeout; see
:mod:`powerlb.reload`) without dropping in-flight requests;
:class:`powerlb.signals.ReloadOnSighup` does that on SIGHUP for the
top-level ``twistd`` runs (embedders call ``reload``).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger

from powerlb.accesslog import AccessLog
from powerlb.backend import Backend, BackendSpec
from powerlb.cache import CacheSweeper, LRUCache
from powerlb.caching import CacheLayer
from powerlb.listening import Listener, drain
from powerlb.outcomes import Outcomes
from powerlb.pool import Pool
from powerlb.proxy import ProxyResource
from powerlb.reload import reloaded
from powerlb.router import Router
from powerlb.routing import Route
from powerlb.server import ProxySite, QuietSite
from powerlb.settings import Config, PoolConfig
from powerlb.stats import Counters, backend_entries, snapshot
from powerlb.values import endpoint_kind

if TYPE_CHECKING:
    from powerlb.http2 import ProxyH2Connection  # needs twisted[http2]: imported where it is used

log = Logger()


class PowerLBService(MultiService):
    """A whole powerlb: proxy listener, optional admin listener, the pools (:class:`Pool`), the router
    (:class:`~powerlb.router.Router`, ``planner``) and the cache."""

    def __init__(
        self, config: Config, reactor: Any = None, listen_endpoint: Optional[IStreamServerEndpoint] = None
    ) -> None:
        """``listen_endpoint`` replaces ``config.listen`` (a worker adopts its parent's socket)."""
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._config = config
        self.reactor = reactor
        self.counters = Counters()
        #: The pools by name (see :class:`Pool`), each a child service; ``default_pool`` is the one
        #: named ``default``, or the first, which ``/api/v1/backends`` and the attributes below act on.
        self.pools: Dict[str, Pool] = {}
        for name, pool_config in _pool_configs(config).items():
            self.pools[name] = self._start_pool(name, pool_config.settings)
        #: The :class:`~powerlb.plan.IPlanner` of the requests (one for the service's life: a
        #: reload swaps its routes and pools).
        self.planner = Router(
            _routes(config, self.default_pool),
            self.pools,
            reactor,
            trusted_proxies=config.trusted_proxies,
            request_id_header=config.request_id_header,
        )
        self.cache: Optional[LRUCache] = None
        if config.cache_size > 0:
            self.cache = LRUCache(
                config.cache_size,
                config.cache_max_object,
                clock=reactor,
                keep_stale=config.cache_grace,
            )
            CacheSweeper(self.cache, reactor, config.cache_sweep_interval).setServiceParent(self)
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
        resource = ProxyResource(self.planner, cache_layer, self.counters, config.request_id_header.encode())
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
            from powerlb.admin import SeriesSampler, admin_root

            sampler = SeriesSampler(self.stats, reactor)
            sampler.setServiceParent(self)
            admin = admin_root(
                self.stats,
                lambda: self.config,
                self,
                cache_layer,
                config.admin_token,
                changes,
                series=sampler.keeper,
            )
            self.admin_listener = Listener(serverFromString(reactor, config.admin), QuietSite(admin, reactor))
            self.admin_listener.setServiceParent(self)

    @property
    def config(self) -> Config:
        """The effective configuration: the settings run with, each pool's live backends (runtime
        API changes included) and, at the top level, the default pool's."""
        pools = {name: PoolConfig(name, pool.config) for name, pool in self.pools.items()}
        default = self.default_pool.config
        return dataclasses.replace(self._config, backends=default.backends, pools=pools)

    @property
    def default_pool(self) -> Pool:
        """The pool ``/api/v1/backends`` acts on: ``default``, or the first one."""
        return self.pools.get("default") or next(iter(self.pools.values()))

    def pool(self, name: str) -> Pool:
        """The pool ``name`` (the default pool for ``""``); ChangeFailed 404 naming the pools otherwise."""
        if not name:
            return self.default_pool
        found = self.pools.get(name)
        if found is None:
            # Imported here: only the runtime API asks for a pool by name (import-light start-up).
            from powerlb.control import ChangeFailed

            raise ChangeFailed(404, f"no pool {name!r}; the pools are: {', '.join(self.pools)}")
        return found

    # The default pool's parts, as before pools (the request path until it takes the planner).
    backends = property(lambda self: self.default_pool.backends)
    balancer = property(lambda self: self.default_pool.balancer)
    clients = property(lambda self: self.default_pool.clients)
    dispatcher = property(lambda self: self.default_pool.dispatcher)
    sticky = property(lambda self: self.default_pool.sticky)
    health = property(lambda self: self.default_pool.health)
    outliers = property(lambda self: self.default_pool.outliers)
    slow_start = property(lambda self: self.default_pool.slow_start)
    probe = property(lambda self: self.default_pool.probe)
    discovery = property(lambda self: self.default_pool.discovery)
    backend_tls = property(lambda self: self.default_pool.backend_tls)

    def stats(self) -> Dict[str, Any]:
        """The live figures shown by ``/api/v1/stats``: every pool's backends (each with its
        ``pool``), the pools (``default`` marks the default pool) and the routes."""
        default = self.default_pool
        figures = snapshot(
            [
                entry
                for name, pool in self.pools.items()
                for entry in backend_entries(name, pool.backends, pool.health.last_result, pool.connections)
            ],
            self.counters,
            self.cache,
            self.outcomes.snapshot(),
            None if self.bus is None else self.bus.stats(),
        )
        figures["pools"] = [{**pool.summary(), "default": pool is default} for pool in self.pools.values()]
        figures["routes"] = self.planner.snapshot()
        return figures

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

    def stopService(self) -> defer.Deferred[Any]:
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
            for pool in self.pools.values():
                pool.close()
            if self.access_log is not None and self.access_log.running:
                self.access_log.stopService()
            return result

        return d.addBoth(close_pools)

    def reload(self, config: Config) -> None:
        """Apply a re-read configuration without dropping in-flight requests.

        Each pool in both configurations applies its own settings (see
        :meth:`Pool.reload`: backends added, removed or re-weighted, a new
        balancer, ``retries``); a new pool starts; a removed pool gets no new
        requests, stops its health checks and closes its connections as its
        in-flight requests end. Then a new :class:`~powerlb.router.Router` over
        the new routes and pools replaces the old one in one step, so a request
        is planned either wholly before or wholly after the reload.
        ``drain_timeout`` applies to the next stop. A change to any other
        setting is logged as needing a restart and ignored.
        """
        old = self._config
        self._config = reloaded(old, config, scope="top")
        new_pools = _pool_configs(config)
        pools = dict(self.pools)
        for name, pool_config in new_pools.items():
            if name in pools:
                before = pools[name].config
                where = "" if len(new_pools) == 1 else f"pools.{name}."  # one pool: the top level's
                pools[name].reload(reloaded(before, pool_config.settings, "pool", where))
            else:
                pools[name] = self._start_pool(name, pool_config.settings)
                log.info("reload: pool {pool} added", pool=name)
        removed = [pools.pop(name) for name in list(pools) if name not in new_pools]
        self.pools = pools
        self.planner.update(_routes(self._config, self.default_pool), self.pools)
        for pool in removed:
            self._retire(pool)
            log.info("reload: pool {pool} removed; its requests in flight finish", pool=pool.name)
        log.info(
            "routes and pools reloaded: {pools} pools, {routes} routes",
            pools=len(self.pools),
            routes=len(self.planner.routes),
        )

    def add_backend(self, spec: BackendSpec) -> Backend:
        """Add a backend to the default pool (see :meth:`Pool.add_backend`)."""
        return self.default_pool.add_backend(spec)

    def remove_backend(self, backend: Backend) -> None:
        """Take a backend out of the default pool (see :meth:`Pool.remove_backend`)."""
        self.default_pool.remove_backend(backend)

    def set_backend_weight(self, backend: Backend, weight: int) -> None:
        """Change the weight of a backend of the default pool (see :meth:`Pool.set_backend_weight`)."""
        self.default_pool.set_backend_weight(backend, weight)

    def _start_pool(self, name: str, settings: Config) -> Pool:
        """A new pool, started with this service (or at once when it runs)."""
        pool = Pool(name, settings, self.reactor, self.counters)
        pool.setServiceParent(self)
        return pool

    def _retire(self, pool: Pool) -> None:
        """Stop a pool the routes no longer name: its checks stop now, its connections close as
        their requests end."""
        d = defer.maybeDeferred(pool.disownServiceParent)
        d.addBoth(lambda result: pool.close())

    def _join_cluster(self, config: Config, cache_layer: Optional[CacheLayer]) -> Any:
        """Start the Redis tier and change bus (see :mod:`powerlb.redistier`); the API's control."""
        from powerlb.redistier import cluster_for

        self.redis, self.bus, changes = cluster_for(config, self, cache_layer, self.reactor)
        self.redis.setServiceParent(self)
        self.bus.setServiceParent(self)
        return changes


def _routes(config: Config, default: Pool) -> Tuple[Route, ...]:
    """``config``'s routes; one catch-all to the default pool when it has none (a Config built
    in code rather than by :func:`~powerlb.config.build_config`)."""
    return config.routes or (Route(pool=default.name),)


def _pool_configs(config: Config) -> Dict[str, PoolConfig]:
    """``config``'s pools; one ``default`` pool of the top-level settings when it names none (a
    Config built in code rather than by :func:`~powerlb.config.build_config`). Each pool
    finds its own backends in DNS (its ``dns`` and ``srv``)."""
    return dict(config.pools) or {"default": PoolConfig("default", config)}


def _http2_connections(site: ProxySite) -> Optional[Callable[[], ProxyH2Connection]]:
    """What makes the HTTP/2 connections of a TLS listener, or None without ``twisted[http2]``."""
    try:
        from powerlb.http2 import ProxyH2Connection
    except ImportError:
        return None  # HTTP/1.1 only
    return lambda: ProxyH2Connection(site)
