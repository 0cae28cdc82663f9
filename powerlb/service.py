"""Lifecycle: one powerlb instance as a Twisted ``MultiService``.

:class:`PowerLBService` owns everything of one instance — backends, balancer,
upstream pools, cache, health checks, listeners — and keeps no global state,
so several can run in one process. ``twistd powerlb``, ``lb.tac`` and
embedders all build it through :func:`powerlb.makeService`.

Stopping drains: the listeners stop at once, idle client connections are
closed, in-flight requests get ``drain_timeout`` seconds to finish, then
whatever is left is cut and the upstream pools are closed.
:meth:`PowerLBService.reload` applies a re-read configuration (backends
added, removed or re-weighted, the algorithm, retries, the drain timeout)
without dropping in-flight requests; :class:`ReloadOnSighup` does that on
SIGHUP for the top-level ``twistd`` runs (embedders call ``reload``).
"""

from __future__ import annotations

import dataclasses
import signal
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

from twisted.application.service import MultiService, Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from powerlb.accesslog import AccessLog
from powerlb.backend import Backend, BackendSpec
from powerlb.balancing import IBalancer, make_balancer
from powerlb.cache import CacheSweeper, LRUCache
from powerlb.caching import CacheLayer
from powerlb.config import SETTINGS, Config, ConfigError, build_config
from powerlb.dispatch import Dispatcher
from powerlb.health import HealthChecker, SlowStart
from powerlb.outcomes import Outcomes
from powerlb.outlier import OutlierEjector
from powerlb.proxy import ProxyResource
from powerlb.server import ProxySite, QuietSite
from powerlb.stats import Counters, snapshot
from powerlb.sticky import StickyCookie
from powerlb.tls import BackendTLS
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


#: How often a draining site looks for connections whose requests have ended.
DRAIN_POLL_INTERVAL = 0.05


def drain(site: Any, clock: Any, timeout: float) -> defer.Deferred:
    """Close a site's client connections as their requests end; abort those left after ``timeout``.

    ``site.channels`` is the set of its open ``HTTPChannel``\\ s and HTTP/2
    connections (the site keeps it up to date). Every :data:`DRAIN_POLL_INTERVAL`
    seconds a connection without a request (idle keep-alive) is closed, and one
    with requests is told to ``close_after_requests()`` (HTTP/1.1: their
    responses say ``Connection: close``; HTTP/2: new streams are refused).
    After ``timeout`` seconds the rest are aborted. The result fires once no connection is left.
    """
    done: defer.Deferred = defer.Deferred()
    deadline = clock.seconds() + timeout
    closing: Set[Any] = set()

    def step() -> None:
        channels = site.channels
        if not channels:
            loop.stop()
            return
        overdue = clock.seconds() >= deadline
        for channel in list(channels):
            if overdue:
                channel.transport.abortConnection()
            elif not channel.requests:
                if channel not in closing:
                    closing.add(channel)
                    channel.loseConnection()
            else:
                channel.close_after_requests()

    loop = LoopingCall(step)
    loop.clock = clock
    loop.start(DRAIN_POLL_INTERVAL, now=True).addBoth(lambda _: done.callback(None))
    return done


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
            lambda backend: probe(
                reactor, backend, health_path, config.health_timeout, self.backend_tls.creator_for(backend)
            ),
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
            self.balancer,
            self.clients,
            retries=config.retries,
            outliers=self.outliers,
            counters=self.counters,
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
        resource = ProxyResource(self.dispatcher, cache_layer, self.counters, self.sticky)
        if listen_endpoint is None:
            listen_endpoint = serverFromString(reactor, config.listen)
        #: The access log (None when off); started before and stopped after the listeners' drain.
        self.access_log: Optional[AccessLog] = None
        if config.access_log is not None:
            self.access_log = AccessLog(config.access_log, config.access_log_format, reactor)
        self.outcomes = Outcomes(reactor, None if self.access_log is None else self.access_log.logger)
        site = ProxySite(resource, reactor, config, self.outcomes)
        if config.http2 and config.listen.split(":", 1)[0].strip().lower() == "ssl":
            site.h2_protocol = _http2_connections(site)
        if cache_layer is not None:
            site.fast_answer = cache_layer.fast_response
        self.proxy_listener = Listener(listen_endpoint, site)
        self.proxy_listener.setServiceParent(self)
        self.admin_listener: Optional[Listener] = None
        if config.admin is not None:
            # Imported here: the admin listener brings the API, the dashboard and prometheus_client.
            from powerlb.admin import admin_root

            admin = admin_root(self.stats, lambda: self.config, self, cache_layer, config.admin_token)
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
        restart and ignored.
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
            by_url[spec.url] = self.add_backend(spec)
            log.info("reload: backend {url} added", url=spec.url)
        self._set_backends([by_url[spec.url] for spec in config.backends])
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
        self.config = dataclasses.replace(self.config, backends=tuple(b.spec() for b in self.backends))

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


#: Config attributes :meth:`PowerLBService.reload` applies; a change to any other needs a restart.
RELOADABLE = frozenset(
    {"backends", "algorithm", "hash_key", "hash_balance_factor", "retries", "drain_timeout"}
)

#: Config attributes a new balancer is built for when a reload changes one of them.
_BALANCER_SETTINGS = ("algorithm", "hash_key", "hash_balance_factor")


def reloaded(old: Config, new: Config) -> Config:
    """What a reload from ``old`` to ``new`` runs with: ``new``, but every setting outside
    :data:`RELOADABLE` kept from ``old`` (each such change is logged as needing a restart)."""
    kept: Dict[str, Any] = {}
    for setting in SETTINGS:
        before, after = getattr(old, setting.attr), getattr(new, setting.attr)
        if setting.attr not in RELOADABLE and after != before:
            kept[setting.attr] = before
            log.warn(
                "reload: {setting} changed, which needs a restart; still using {value}",
                setting=setting.key,
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

    def __init__(self, target: Any, source: ConfigSource, reactor: Any = None) -> None:
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

    A worker supervisor also passes ``source`` to its workers, which re-read
    it themselves when it forwards SIGHUP to them.
    """
    from powerlb.workers import WorkerSupervisor

    if isinstance(service, WorkerSupervisor):
        service.config_source = source
    ReloadOnSighup(service, source, service.reactor).setServiceParent(service)
