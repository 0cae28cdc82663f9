"""``--workers N``: N processes serving one listening socket, supervised by the main process.

The main process binds the socket (so privileged ports work before twistd
drops privileges) but never accepts on it; each worker adopts it and runs a
whole powerlb: its own upstream pools, health checks and cache. Workers send
their stats snapshot to the main process once a second over a pipe (fd
:data:`REPORT_FD`; their stdout and stderr are the main process's, e.g. for
``access-log: -``), and the main process's admin listener serves the merged
figures, JSON and Prometheus metrics alike. A worker that dies is started again.

The workers are one balancer: the main process's runtime API checks a change
against the merged view, then relays it to every worker over its stdin pipe
(:mod:`powerlb.control` has the messages) and answers once each worker has
acknowledged it, or names those that did not within :data:`CHANGE_TIMEOUT`.
A ``PURGE`` a worker serves is forwarded to the main process, which relays it
to the other workers. The main process keeps the backend changes made since
the last reload and hands them to every worker it starts, which applies them
before serving (a restarted worker's cache starts empty, so purges are not
kept); a reload sent to the workers makes the file the truth again, so the
list keeps only the states of the backends that stay (see
:func:`powerlb.control.kept_by_reload`).

Per process: the cache (each worker stores what it fetched), upstream
connections, health-check state (every worker probes every backend, so the
views agree within one check interval), the access log's buffer (each writes
whole lines to the same file). Merged: counters, in-flight figures, cache
sizes and latency histogram buckets are summed; a backend shows as healthy
only while every worker sees it healthy.

With ``redis``, the main process is this instance on the cluster's change bus
(:mod:`powerlb.redistier`): it publishes the changes made through its API and
those its workers forward (purges, invalidations), and relays the other
instances' changes to every worker without publishing them again.

Stopping sends SIGTERM to every worker, which drains its connections (up to
``drain_timeout``); a worker still running ``STOP_MARGIN`` seconds after that
is killed. SIGHUP to the main process (see
:func:`powerlb.signals.reload_on_sighup`) is forwarded to every worker, which
re-reads the configuration itself.
"""

from __future__ import annotations

import base64
import dataclasses
import itertools
import os
import pickle
import signal
import socket
import sys
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import MultiService, Service
from twisted.internet import defer, protocol
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.interfaces import IProcessTransport, IReactorTime, ITransport
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from powerlb.control import (
    Applied,
    Apply,
    Change,
    ChangeFailed,
    Forward,
    LocalControl,
    Message,
    ProtocolError,
    Report,
    WorkerOutcome,
    apply_change,
    change_from_json,
    decode,
    encode,
    kept_by_reload,
    relay_verdict,
)
from powerlb.listening import Listener
from powerlb.reload import ConfigSource, reloaded
from powerlb.settings import Config
from powerlb.signals import OnSignal, ReloadOnSighup
from powerlb.stats import hit_ratio

if TYPE_CHECKING:  # only a worker runs one (imported there); the bus only with redis
    from powerlb.control import Control
    from powerlb.redistier import ClusterBus
    from powerlb.service import PowerLBService

log = Logger()

#: The fd number a worker finds the shared listening socket on.
LISTEN_FD = 3
#: The fd number a worker writes its stats snapshots to (a pipe to the main process).
REPORT_FD = 4
REPORT_INTERVAL = 1.0
RESTART_DELAY = 1.0
#: Seconds a stopping worker gets beyond ``drain_timeout`` before it is killed.
STOP_MARGIN = 5.0
#: Seconds every worker gets to acknowledge a relayed change (one still starting may take a few);
#: less than ``powerlb-ctl`` waits for an answer (:data:`powerlb.ctl.TIMEOUT`).
CHANGE_TIMEOUT = 8.0


def merge_snapshots(snapshots: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One stats snapshot from several workers': numbers summed, flags all-true.

    Mappings merge key by key over the keys any worker has (``responses`` is
    keyed by what each worker has seen); backends by pool and URL, routes by
    their label and pools by name, in the order they first appear (during a
    reload workers may briefly list different ones); a pool's entry is the
    first worker's (its counts are of configuration, not of traffic); other
    lists of the same length element by element (latency histogram buckets).
    Identity and configuration fields (``url``, ``weight``,
    ``effective_weight``, ``max_bytes`` ...) are taken from the first worker
    that has them; ``hit_ratio`` is recomputed.
    """
    if not snapshots:
        return {}
    keyed = {name: _grouped(snapshots, name, key) for name, key in _KEYED_LISTS.items()}
    merged: Dict[str, Any] = _merge([{k: v for k, v in s.items() if k not in keyed} for s in snapshots])
    for name, groups in keyed.items():
        if name == "backends" or any(name in snapshot for snapshot in snapshots):
            merged[name] = [same[0] if name == "pools" else _merge(same) for same in groups]
    cache = merged.get("cache")
    if isinstance(cache, dict):
        cache["hit_ratio"] = hit_ratio(cache)
    return merged


#: The lists of a snapshot whose entries are matched across workers, and each entry's key.
_KEYED_LISTS: Dict[str, Callable[[Dict[str, Any]], Any]] = {
    "backends": lambda backend: (backend.get("pool"), backend["url"]),
    "pools": lambda pool: pool["name"],
    "routes": lambda route: route["route"],
}


def _grouped(
    snapshots: List[Dict[str, Any]], name: str, key: Callable[[Dict[str, Any]], Any]
) -> List[List[Any]]:
    """The entries of list ``name`` of every snapshot, grouped by ``key``, in first-seen order."""
    groups: Dict[Any, List[Any]] = {}
    for snapshot in snapshots:
        for entry in snapshot.get(name, []):
            groups.setdefault(key(entry), []).append(entry)
    return list(groups.values())


_SAME_IN_EVERY_WORKER = frozenset(
    {"url", "id", "weight", "effective_weight", "backup", "max_bytes", "max_object", "enabled", "pool"}
)


def _merge(values: List[Any], key: str = "") -> Any:
    first = values[0]
    if key in _SAME_IN_EVERY_WORKER:
        return first
    if isinstance(first, bool):
        return all(values)
    if isinstance(first, (int, float)):
        return sum(v for v in values if isinstance(v, (int, float)))
    if isinstance(first, dict):
        keys = dict.fromkeys(k for v in values if isinstance(v, dict) for k in v)
        return {k: _merge([v[k] for v in values if isinstance(v, dict) and k in v], k) for k in keys}
    if isinstance(first, list) and all(isinstance(v, list) and len(v) == len(first) for v in values):
        return [_merge([v[i] for v in values]) for i in range(len(first))]
    return first


def _lines(buffer: bytes, data: bytes) -> Tuple[List[bytes], bytes]:
    """The whole lines in ``buffer + data`` and what is left after the last newline."""
    *lines, rest = (buffer + data).split(b"\n")
    return lines, rest


class _WorkerProcess(protocol.ProcessProtocol):
    """The supervisor's side of one worker: its messages (stats, acknowledgments, forwarded
    purges), the changes sent to it that it has not acknowledged yet, and its end."""

    transport: IProcessTransport  # set when the supervisor spawns it, before any use

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.buffer = b""
        self.snapshot: Optional[Dict[str, Any]] = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.reload_pending = False
        self.pending: Dict[int, defer.Deferred[Applied]] = {}

    @property
    def pid(self) -> Optional[int]:
        """The worker's process id (None once it has exited)."""
        pid: Optional[int] = self.transport.pid
        return pid

    def change(self, change_id: int, change: Change) -> defer.Deferred[WorkerOutcome]:
        """Send the worker ``change``; fires with its :class:`WorkerOutcome`, an error one if it
        refuses, exits or does not answer within :data:`CHANGE_TIMEOUT`."""
        pid = self.pid

        def forget(_: defer.Deferred[Applied]) -> None:
            self.pending.pop(change_id, None)

        acked: defer.Deferred[Applied] = defer.Deferred(forget)
        self.pending[change_id] = acked
        self.transport.write(encode(Apply(change_id, change)))
        acked.addTimeout(CHANGE_TIMEOUT, self.supervisor.reactor)

        def outcome(applied: Any) -> WorkerOutcome:
            if isinstance(applied, Applied):
                if applied.error is None:
                    return WorkerOutcome(self.index, pid, result=applied.result)
                return WorkerOutcome(self.index, pid, error=applied.error)
            if applied.check(defer.TimeoutError):
                return WorkerOutcome(
                    self.index, pid, error=f"no answer in {CHANGE_TIMEOUT:g} s", timed_out=True
                )
            return WorkerOutcome(self.index, pid, error=applied.getErrorMessage())

        return acked.addBoth(outcome)

    def reload(self) -> None:
        """Send the worker SIGHUP; one that has not reported yet (no handler yet) gets it when it does."""
        if self.snapshot is None:
            self.reload_pending = True
        elif self.transport.pid is not None:
            self.transport.signalProcess("HUP")

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD == REPORT_FD:
            self.report_received(data)

    def report_received(self, data: bytes) -> None:
        """Bytes of the worker's messages (one a line, see :mod:`powerlb.control`)."""
        lines, self.buffer = _lines(self.buffer, data)
        for line in lines:
            try:
                message = decode(line)
            except ProtocolError as err:
                log.warn("worker {index} sent an unreadable line: {err}", index=self.index, err=err)
            else:
                self.message_received(message)
        if self.reload_pending and self.snapshot is not None:
            self.reload_pending = False
            self.reload()

    def message_received(self, message: Message) -> None:
        """One message from the worker: a stats report, a change acknowledged, a purge to relay."""
        if isinstance(message, (Report, Applied)):
            self.snapshot = message.stats
        if isinstance(message, Applied):
            acked = self.pending.pop(message.id, None)
            if acked is not None:  # else it came after the timeout
                acked.callback(message)
        elif isinstance(message, Forward):
            self.supervisor.relay(message.change, origin=self)

    def processEnded(self, reason: Failure) -> None:
        pending, self.pending = self.pending, {}
        for acked in pending.values():
            acked.errback(ChangeFailed(502, "the worker exited"))
        self.ended.callback(None)
        self.supervisor.worker_ended(self, reason)


class WorkerSupervisor(MultiService):
    """Binds the listening socket, runs ``config.workers`` worker processes on it and merges their stats."""

    def __init__(self, config: Config, reactor: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.config = config
        self._endpoint = serverFromString(reactor, config.listen)
        self.port: Any = None
        self.workers: List[Optional[_WorkerProcess]] = [None] * config.workers
        self._stopping = False
        #: The backend changes made since the last reload, in order: every worker started gets them.
        self.changes: List[Change] = []
        self._change_ids = itertools.count(1)
        #: With redis, this instance's voice on the cluster's change bus (see _join_cluster).
        self.bus: Optional[ClusterBus] = None
        changes: Control = self if config.redis is None else self._join_cluster(config, reactor)
        if config.admin is not None:
            # Imported here: the admin listener brings the API, the dashboard and prometheus_client.
            from powerlb.admin import SeriesSampler, admin_root
            from powerlb.server import QuietSite

            sampler = SeriesSampler(self.stats, reactor)
            sampler.setServiceParent(self)
            root = admin_root(
                self.stats,
                lambda: self.config,
                token=config.admin_token,
                changes=changes,
                series=sampler.keeper,
            )
            admin_site = QuietSite(root, reactor)
            Listener(serverFromString(reactor, config.admin), admin_site).setServiceParent(self)

    def _join_cluster(self, config: Config, reactor: Any) -> Control:
        """Join the Redis change bus as this instance (see :mod:`powerlb.redistier`): the API's
        changes are published once applied, the purges the workers forward once relayed, and the
        other instances' changes are relayed to every worker (and kept for workers to come). The
        workers' own buses only forward to here (:meth:`~powerlb.redistier.ClusterBus.behind_supervisor`).
        """
        from powerlb.redistier import ClusterBus, ClusterControl, store_for

        store = store_for(config, reactor)
        self.bus = ClusterBus(store, self)
        store.setServiceParent(self)
        self.bus.setServiceParent(self)
        return ClusterControl(self, self.bus)

    @property
    def config_source(self) -> Optional[ConfigSource]:
        """Where the workers re-read the configuration from on SIGHUP: the source of this
        supervisor's :class:`~powerlb.signals.ReloadOnSighup` (see
        :func:`~powerlb.signals.reload_on_sighup`). Without one they keep the configuration
        they started with."""
        for child in self:
            if isinstance(child, ReloadOnSighup) and child.target is self:
                return child.source
        return None

    def privilegedStartService(self) -> None:
        self._bind()
        super().privilegedStartService()

    def startService(self) -> None:
        self._bind()
        super().startService()
        for index in range(len(self.workers)):
            self._spawn(index)

    def _bind(self) -> None:
        if self.port is not None:
            return
        failures: List[Any] = []
        self._endpoint.listen(protocol.Factory()).addCallbacks(self._bound, failures.append)
        if failures:
            failures[0].raiseException()

    def _bound(self, port: Any) -> None:
        # Keep the socket open for the workers, but never accept on it here.
        port.stopReading()
        self.port = port

    def _spawn(self, index: int) -> None:
        worker = _WorkerProcess(self, index)
        self.workers[index] = worker
        family = socket.AF_INET6 if ":" in self.port.getHost().host else socket.AF_INET
        overrides: Dict[str, Any] = {"workers": 1, "admin": None}
        child_config = dataclasses.replace(self.config, **overrides)
        source = self.config_source
        if source is not None:
            source = dataclasses.replace(source, overrides={**source.overrides, **overrides})
        changes = [change.to_json() for change in self.changes]
        payload = base64.b64encode(pickle.dumps((child_config, int(family), source, changes))) + b"\n"
        process = self.reactor.spawnProcess(
            worker,
            sys.executable,
            [sys.executable, "-m", "powerlb.workers"],
            env=dict(os.environ),
            childFDs={0: "w", 1: 1, 2: 2, LISTEN_FD: self.port.fileno(), REPORT_FD: "r"},
        )
        process.write(payload)
        log.info("worker {index} started (pid {pid})", index=index, pid=process.pid)

    def worker_ended(self, worker: _WorkerProcess, reason: Failure) -> None:
        """A worker exited: start it again unless powerlb is stopping."""
        if self._stopping or self.workers[worker.index] is not worker:
            return
        log.warn("worker {index} exited ({reason}); restarting", index=worker.index, reason=reason.value)
        self.workers[worker.index] = None
        self.reactor.callLater(RESTART_DELAY, self._respawn, worker.index)

    def _respawn(self, index: int) -> None:
        if not self._stopping and self.workers[index] is None:
            self._spawn(index)

    @property
    def caching(self) -> bool:
        """Whether the workers have a cache to purge."""
        return self.config.cache_size > 0

    def apply(self, change: Change) -> defer.Deferred[Dict[str, Any]]:
        """Relay ``change`` to every running worker; fires with their results summed and their
        pids (``workers``) once each has applied it, or fails with ChangeFailed naming those that
        did not (see :func:`powerlb.control.relay_verdict`). A worker not running now (being
        restarted) gets it when it starts, as every backend change is kept for workers to come."""
        keep = change.op != "purge"
        if keep:
            self.changes.append(change)

        def verdict(outcomes: List[WorkerOutcome]) -> Dict[str, Any]:
            if keep and not any(outcome.result is not None for outcome in outcomes):
                self.changes.remove(change)  # nobody has it: workers to come should not either
            return relay_verdict(outcomes)

        return self._fan_out(change, None).addCallback(verdict)

    def relay(self, change: Change, origin: _WorkerProcess) -> defer.Deferred[None]:
        """Relay a change a worker made on its own (a ``PURGE`` it served, with redis an
        invalidation too) to the other workers, and publish it on the bus; those that did not
        apply it are logged."""
        if self.bus is not None:  # the worker has deleted the shared copies already
            self.bus.publish(change)

        def logged(outcomes: List[WorkerOutcome]) -> None:
            try:
                relay_verdict([WorkerOutcome(origin.index, origin.pid, result={}), *outcomes])
            except ChangeFailed as err:
                log.warn("purge from worker {index}: {err}", index=origin.index, err=err.message)

        return self._fan_out(change, origin).addCallback(logged)

    def _fan_out(
        self, change: Change, origin: Optional[_WorkerProcess]
    ) -> defer.Deferred[List[WorkerOutcome]]:
        """Send ``change`` to every running worker but ``origin``; fires with their outcomes."""
        change_id = next(self._change_ids)
        live = [w for w in self.workers if w is not None and w is not origin and w.pid is not None]
        return defer.gatherResults([worker.change(change_id, change) for worker in live])

    def stats(self) -> Dict[str, Any]:
        """The workers' latest snapshots merged, with each worker's pid."""
        live = [w for w in self.workers if w is not None]
        merged = merge_snapshots([w.snapshot for w in live if w.snapshot is not None])
        merged["workers"] = [w.transport.pid for w in live if w.transport is not None]
        if self.bus is not None:  # the workers' buses neither subscribe nor receive: this one does
            merged.setdefault("redis", {}).update(subscribed=self.bus.subscribed, received=self.bus.received)
        return merged

    def reload(self, config: Config) -> None:
        """Take ``config`` for workers started from now on and send every worker SIGHUP.

        Settings a reload cannot change (see :func:`powerlb.reload.reloaded`)
        are logged and kept, so workers started later run as the others.
        Without a ``config_source`` the workers have no file to re-read and
        keep their configuration until they restart.
        """
        self.config = reloaded(self.config, config)
        if self.config_source is None:
            log.warn("reload: the workers have no config file to re-read; they apply it when restarted")
            return
        # the workers go back to what the file says, keeping the states of the backends that stay
        pools = {
            name: [spec.id for spec in pool.settings.backends] for name, pool in self.config.pools.items()
        }
        default = pools.get("default") or next(
            iter(pools.values()), [spec.id for spec in self.config.backends]
        )
        self.changes = kept_by_reload(self.changes, default, pools)
        for worker in self.workers:
            if worker is not None:
                worker.reload()

    def reopen_logs(self) -> None:
        """Make every worker open its access log file again (SIGUSR1; workers that have not
        reported yet have no handler, and open the file afresh anyway)."""
        for worker in self.workers:
            if worker is not None and worker.snapshot is not None and worker.transport.pid is not None:
                worker.transport.signalProcess(signal.SIGUSR1)  # a number: "USR1" is no name Twisted knows

    def stopService(self) -> defer.Deferred[None]:
        """Stop accepting at once, let every worker drain and exit (killed if it overstays)."""
        self._stopping = True
        # The workers hold copies of the socket: it stops accepting once they have closed theirs too.
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()
        live = [w for w in self.workers if w is not None and w.transport.pid is not None]
        for worker in live:
            worker.transport.signalProcess("TERM")
        ended = defer.DeferredList([w.ended for w in live])
        timer = self.reactor.callLater(self.config.drain_timeout + STOP_MARGIN, self._kill, live)
        ended.addBoth(lambda _: timer.active() and timer.cancel())
        return ended.addBoth(lambda _: defer.maybeDeferred(MultiService.stopService, self))

    def _kill(self, workers: List[_WorkerProcess]) -> None:
        for worker in workers:
            if worker.transport.pid is not None:
                worker.transport.signalProcess("KILL")


class _SupervisorPipe(protocol.Protocol):
    """A worker's side of the pipes to the supervisor: it applies the changes the supervisor
    sends (to ``control``) and acknowledges each with ``stats()`` just after; when the pipes
    close, the supervisor is gone."""

    transport: ITransport  # the worker's stdio, connected before any message

    def __init__(self, control: LocalControl, stats: Callable[[], Dict[str, Any]]) -> None:
        self.control = control
        self.stats = stats
        self.buffer = b""

    def send(self, message: Message) -> None:
        """Write one message to the supervisor."""
        self.transport.write(encode(message))

    def dataReceived(self, data: bytes) -> None:
        lines, self.buffer = _lines(self.buffer, data)
        for line in lines:
            try:
                message = decode(line)
            except ProtocolError as err:
                log.warn("unreadable line from the supervisor: {err}", err=err)
                continue
            if not isinstance(message, Apply):
                log.warn("unexpected message from the supervisor: {message}", message=message)
                continue
            result, error = {}, None
            try:
                result = apply_change(self.control.target, self.control.purge, message.change)
            except ChangeFailed as err:
                error = err.message
            self.send(Applied(message.id, result, error, self.stats()))

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        from twisted.internet import reactor

        if reactor.running:
            reactor.stop()


class _Reporting(Service):
    """Writes the worker's stats snapshot to the supervisor every second."""

    def __init__(self, service: PowerLBService, pipe: _SupervisorPipe, reactor: IReactorTime) -> None:
        self.loop = LoopingCall(lambda: pipe.send(Report(service.stats())))
        self.loop.clock = reactor

    def startService(self) -> None:
        super().startService()
        self.loop.start(REPORT_INTERVAL)

    def stopService(self) -> None:
        super().stopService()
        if self.loop.running:
            self.loop.stop()


def _accept_one_at_a_time(port: Any) -> None:
    """Make ``port`` accept one connection per wake-up, so the workers share new connections.

    Every worker is woken when a connection arrives on the shared socket;
    Twisted's accept loop would let the first one take a whole burst (up to
    100 and growing), leaving the others idle.
    """
    accept = port.doRead

    def doRead() -> Any:
        port.numberAccepts = 1
        return accept()

    port.doRead = doRead


def _purge_everywhere(cache: Any, pipe: _SupervisorPipe) -> None:
    """Make the ``PURGE`` requests this worker serves purge every worker: ``cache.purge`` (which
    the cache layer calls for them) purges here and forwards the purge to the supervisor. Purges
    the supervisor relays use the original method (the pipe's control), so they go no further."""
    purge_here: Callable[[bytes, bool], int] = cache.purge

    def purge(key: bytes, prefix: bool = False) -> int:
        removed = purge_here(key, prefix)
        pipe.send(Forward(Change("purge", key=key, prefix=prefix)))
        return removed

    cache.purge = purge


def worker_main() -> None:
    """Entry point of a worker process: config on stdin, the listening socket on fd 3, reports to fd 4."""
    from powerlb.eventloop import install_unless_chosen

    install_unless_chosen()
    from twisted.internet import reactor
    from twisted.internet.stdio import StandardIO
    from twisted.logger import globalLogBeginner, textFileLogObserver

    # Imported here: only a worker runs a PowerLBService; the supervisor goes without the proxy modules.
    from powerlb.service import PowerLBService

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    # Unbuffered: what follows the first line (changes) is the supervisor pipe's to read.
    with open(0, "rb", buffering=0, closefd=False) as stdin:
        config, family, source, changes = pickle.loads(base64.b64decode(stdin.readline()))
    endpoint = AdoptedStreamServerEndpoint(reactor, LISTEN_FD, family)
    service = PowerLBService(config, reactor, listen_endpoint=endpoint)
    cache = service.proxy_listener.factory.resource.cache
    control = LocalControl(service, None if cache is None else cache.purge)
    if service.bus is not None:  # with redis, cache.purge tells the cluster: this purges here only
        control = service.bus.control
    for change in changes:  # made before this worker started
        try:
            apply_change(service, control.purge, change_from_json(change))
        except ChangeFailed as err:
            log.warn("a change made before this worker started does not apply: {err}", err=err.message)
    if source is not None:
        # Before the first report: the supervisor sends SIGHUP only once the worker has reported.
        ReloadOnSighup(service, source, reactor).setServiceParent(service)
    if service.access_log is not None:
        OnSignal(signal.SIGUSR1, service.reopen_logs, reactor).setServiceParent(service)
    pipe = _SupervisorPipe(control, service.stats)
    StandardIO(pipe, stdout=REPORT_FD, reactor=reactor)  # type: ignore[call-arg]  # mypy reads Windows' StandardIO; POSIX's takes stdout
    if service.bus is not None:  # its purges and invalidations go to the supervisor (and on)
        service.bus.behind_supervisor(lambda change: pipe.send(Forward(change)))
    elif cache is not None:
        _purge_everywhere(cache, pipe)
    _Reporting(service, pipe, reactor).setServiceParent(service)
    service.startService()  # the adopted endpoint closes LISTEN_FD once it holds its own copy
    _accept_one_at_a_time(service.proxy_listener.port)
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    reactor.run()


if __name__ == "__main__":
    worker_main()
