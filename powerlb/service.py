"""Lifecycle: one powerlb instance as a Twisted ``MultiService``.

:class:`PowerLBService` owns everything of one instance — backends, balancer,
upstream pools, cache, health checks, listeners — and keeps no global state,
so several can run in one process. ``twistd powerlb``, ``lb.tac`` and
embedders all build it through :func:`powerlb.makeService`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.web.server import Site

from powerlb.admin import admin_root
from powerlb.backend import Backend
from powerlb.balancing import make_balancer
from powerlb.cache import CacheSweeper, LRUCache
from powerlb.caching import CacheLayer
from powerlb.config import Config
from powerlb.dispatch import Dispatcher
from powerlb.health import HealthChecker, SlowStart
from powerlb.outlier import OutlierEjector
from powerlb.proxy import ProxyResource
from powerlb.server import ProxySite
from powerlb.stats import Counters, snapshot
from powerlb.upstream import ProxyClientFactory, probe

log = Logger()


class Listener(Service):
    """Listens on a Twisted server endpoint while running.

    ``port`` is the ``IListeningPort`` while listening (set at start-up for
    TCP, SSL and UNIX endpoints); :meth:`whenListening` waits for it.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: Any) -> None:
        self.endpoint = endpoint
        self.factory = factory
        self.port: Optional[IListeningPort] = None
        self._started = False
        self._waiting: list = []

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self._listen()

    def startService(self) -> None:
        super().startService()
        self._listen()

    def _listen(self) -> None:
        if self._started:
            return
        self._started = True
        failures: list = []
        d = self.endpoint.listen(self.factory)
        d.addCallbacks(self._listening, failures.append)
        if failures:
            # Raised synchronously so twistd and embedders see a bad port at start-up.
            failures[0].raiseException()

    def _listening(self, port: IListeningPort) -> None:
        self.port = port
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(port)

    def whenListening(self) -> defer.Deferred:
        """A Deferred firing with the ``IListeningPort`` once listening."""
        if self.port is not None:
            return defer.succeed(self.port)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d

    def stopService(self) -> Any:
        super().stopService()
        self._started = False
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None


class QuietSite(Site):
    """A ``Site`` that formats no access-log line unless an access log is configured.

    twisted.web logs every request to the Twisted log by default, which costs
    more per request than the proxying itself; powerlb leaves it off.
    """

    def __init__(self, resource: Any, reactor: Any, access_log: Optional[str] = None) -> None:
        super().__init__(resource, logPath=None if access_log in (None, "-") else access_log, reactor=reactor)
        self.noisy = False
        self._access_log = access_log

    def log(self, request: Any) -> None:
        if self._access_log is not None:
            super().log(request)


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
        self.balancer = make_balancer(config.algorithm, self.backends)
        self.clients: Dict[Backend, ProxyClientFactory] = {
            backend: ProxyClientFactory(
                backend,
                reactor,
                connect_timeout=config.connect_timeout,
                response_timeout=config.response_timeout,
                keepalive_timeout=config.keepalive_timeout,
                max_idle=config.keepalive_max_idle,
            )
            for backend in self.backends
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
        health_path = config.health_path.encode()
        self.slow_start = SlowStart(reactor, config.slow_start)
        self.slow_start.setServiceParent(self)
        self.outliers: Optional[OutlierEjector] = None
        if config.outlier_failures > 0:
            self.outliers = OutlierEjector(
                reactor, config.outlier_failures, config.outlier_backoff, on_readmit=self.slow_start.begin
            )
            self.outliers.setServiceParent(self)
        self.health = HealthChecker(
            self.backends,
            lambda backend: probe(reactor, backend, health_path, config.health_timeout),
            reactor,
            config.health_interval,
            config.health_timeout,
            rise=config.health_rise,
            fall=config.health_fall,
            on_pass=self.outliers.health_passed if self.outliers is not None else None,
            on_up=self.slow_start.begin,
        )
        self.health.setServiceParent(self)
        self.dispatcher = Dispatcher(
            self.balancer, self.clients, retries=config.retries, outliers=self.outliers
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
        resource = ProxyResource(self.dispatcher, cache_layer, self.counters)
        if listen_endpoint is None:
            listen_endpoint = serverFromString(reactor, config.listen)
        self.proxy_listener = Listener(listen_endpoint, ProxySite(resource, reactor, config))
        self.proxy_listener.setServiceParent(self)
        self.admin_listener: Optional[Listener] = None
        if config.admin is not None:
            self.admin_listener = Listener(
                serverFromString(reactor, config.admin),
                QuietSite(admin_root(self.stats, cache_layer, config.admin_token), reactor),
            )
            self.admin_listener.setServiceParent(self)

    def stats(self) -> Dict[str, Any]:
        """The live figures shown by ``/_powerlb/stats``."""
        return snapshot(
            self.backends,
            self.counters,
            self.cache,
            self.health.last_result,
            lambda b: {
                "open_connections": self.clients[b].open_connections,
                "idle_connections": self.clients[b].idle_connections,
            },
        )

    def stopService(self) -> defer.Deferred:
        d = defer.maybeDeferred(super().stopService)

        def close_pools(result: Any) -> Any:
            for client in self.clients.values():
                client.close()
            return result

        return d.addBoth(close_pools)
