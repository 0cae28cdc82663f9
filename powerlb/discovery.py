"""Service discovery by DNS: backends from A/AAAA names (``dns``) and SRV names (``srv``).

The pure part decides: :func:`address_found` and :func:`srv_found` turn DNS
records into :class:`Found` (the :class:`Target`\\ s a name stands for, and
how long that holds), :func:`after_lookup` what a lookup (or its failure)
leaves known and when to look again (the TTL, clamped to ``dns-min-ttl`` ..
``dns-max-ttl``; a failure keeps the last known set and backs off),
:func:`reconcile` what to change in the live backends for what is wanted.

:class:`DnsDiscovery` is the thin Twisted service: it looks every name up on an
injected clock through an injected ``IResolver`` (:func:`make_resolver`: a
non-caching ``twisted.names.client.Resolver``, so each lookup reaches the DNS
server), health-checks each new address before it takes traffic and applies the
changes through the same entry points as a reload and the runtime API
(``add_backend``, ``remove_backend``, ``set_backend_weight`` of a
:class:`~powerlb.api.BackendControl`). An address that vanishes drains, and is
removed once its requests in flight have ended. It owns only the backends it
added: static ones (``backends``) and those added through the API stay.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    AbstractSet,
    Any,
    Callable,
    Dict,
    FrozenSet,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.names import dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure

from powerlb.backend import Backend, BackendSpec
from powerlb.health import passes
from powerlb.settings import Config
from powerlb.values import format_host_port

if TYPE_CHECKING:
    from powerlb.api import BackendControl

log = Logger()

#: The resolver's query timeouts: a query is sent again after each, and fails after the last (seconds).
QUERY_TIMEOUT: Tuple[float, ...] = (1.0, 3.0)
#: How often draining backends are looked at, to remove those with no request in flight (seconds).
DRAIN_POLL = 0.5


# --- the pure part ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """One discovered backend: an IP address, a port, a weight and whether it is a backup."""

    host: str
    port: int
    weight: int = 1
    backup: bool = False

    @property
    def id(self) -> str:
        """``host:port`` (``[::1]:80``), as ``Backend.id``."""
        return format_host_port((self.host, self.port))

    def spec(self) -> BackendSpec:
        """The backend this target stands for (plain ``http://``)."""
        return BackendSpec(
            url=f"http://{self.id}", host=self.host, port=self.port, weight=self.weight, backup=self.backup
        )


@dataclass(frozen=True)
class Found:
    """What one lookup found: its targets and the seconds they hold for (the smallest TTL)."""

    targets: FrozenSet[Target]
    ttl: float


@dataclass(frozen=True)
class Timing:
    """When to look again: a TTL is clamped to ``min_ttl`` .. ``max_ttl``; after a failed lookup
    the next one comes after ``min_ttl``, doubling with each further failure up to ``max_ttl``."""

    min_ttl: float
    max_ttl: float


def _by_id(targets: Iterable[Target]) -> Dict[str, Target]:
    """Targets by id, the first of each id kept."""
    out: Dict[str, Target] = {}
    for target in targets:
        out.setdefault(target.id, target)
    return out


def after_lookup(
    known: Mapping[str, Target], outcome: Optional[Found], failures: int, timing: Timing
) -> Tuple[Dict[str, Target], int, float]:
    """``(known targets by id, consecutive failures, seconds to the next lookup)`` after a lookup.

    ``outcome`` is None for a failed lookup. A failed one, or one that found
    nothing, keeps ``known`` and backs off; else its targets replace ``known``
    and the next lookup comes when their TTL ends.
    """
    if outcome is None or not outcome.targets:
        failures += 1
        delay = timing.min_ttl * 2 ** min(failures - 1, 32)
        return dict(known), failures, min(delay, timing.max_ttl)
    return (
        _by_id(sorted(outcome.targets, key=_order)),
        0,
        min(max(outcome.ttl, timing.min_ttl), timing.max_ttl),
    )


def _order(target: Target) -> Tuple[bool, str, int]:
    return (target.backup, target.host, target.port)


def merge(sets: Sequence[Mapping[str, Target]]) -> Dict[str, Target]:
    """The targets of several names together; an address two names give counts once, as the first gives it."""
    out: Dict[str, Target] = {}
    for targets in sets:
        for target_id, target in targets.items():
            out.setdefault(target_id, target)
    return out


@dataclass(frozen=True)
class Changes:
    """What :func:`reconcile` says to do, each by target id.

    ``check``: new targets, health-checked before they are added;
    ``forget``: targets being checked that are no longer wanted; ``drain``:
    owned backends no longer wanted; ``undrain``: draining ones wanted again;
    ``reweight``: owned ones whose weight or backup flag changed (the new target).
    """

    check: Tuple[str, ...] = ()
    forget: Tuple[str, ...] = ()
    drain: Tuple[str, ...] = ()
    undrain: Tuple[str, ...] = ()
    reweight: Tuple[Target, ...] = ()


def reconcile(
    wanted: Mapping[str, Target],
    owned: Mapping[str, Target],
    draining: AbstractSet[str],
    checking: AbstractSet[str],
    taken: AbstractSet[str],
) -> Changes:
    """The changes that make the live backends what DNS says.

    ``owned``: the backends discovery added, as last applied (``draining`` a
    subset); ``checking``: new targets whose health check has not passed yet;
    ``taken``: ids of live backends discovery does not own (static, or added
    through the API), which it leaves alone.
    """
    want = {target_id: target for target_id, target in wanted.items() if target_id not in taken}
    return Changes(
        check=tuple(sorted(set(want) - set(owned) - checking)),
        forget=tuple(sorted(checking - set(want))),
        drain=tuple(sorted(set(owned) - set(want) - draining)),
        undrain=tuple(sorted(draining & set(want))),
        reweight=tuple(
            want[target_id]
            for target_id in sorted(set(owned) & set(want))
            if want[target_id] != owned[target_id]
        ),
    )


def _address(record: dns.RRHeader) -> Optional[str]:
    """The address of an A or AAAA record, else None."""
    payload: Any = record.payload
    if record.type == dns.A:
        return str(payload.dottedQuad())
    if record.type == dns.AAAA:
        return socket.inet_ntop(socket.AF_INET6, payload.address)
    return None


def addresses(records: Iterable[dns.RRHeader]) -> Dict[str, List[Tuple[str, float]]]:
    """The A and AAAA records among ``records``: ``{name: [(address, ttl), ...]}`` (names lower-case)."""
    out: Dict[str, List[Tuple[str, float]]] = {}
    for record in records:
        address = _address(record)
        if address is not None:
            out.setdefault(str(record.name).lower().rstrip("."), []).append((address, record.ttl))
    return out


def address_found(records: Iterable[dns.RRHeader], port: int) -> Found:
    """The targets of a ``dns: NAME:PORT`` lookup: every A/AAAA address among the answers (aliases
    followed by the server included), on ``port``, weight 1."""
    found = [entry for entries in addresses(records).values() for entry in entries]
    return Found(
        frozenset(Target(address, port) for address, _ in found),
        min((ttl for _, ttl in found), default=0.0),
    )


def srv_records(records: Iterable[dns.RRHeader]) -> List[Tuple[dns.Record_SRV, float]]:
    """The SRV records among ``records`` with their TTL, but those whose target is ``.`` (no service)."""
    found: List[Tuple[dns.Record_SRV, float]] = []
    for record in records:
        payload = record.payload
        if record.type == dns.SRV and isinstance(payload, dns.Record_SRV) and str(payload.target).strip("."):
            found.append((payload, record.ttl))
    return found


def srv_found(
    records: Sequence[Tuple[dns.Record_SRV, float]], known: Mapping[str, Sequence[Tuple[str, float]]]
) -> Found:
    """The targets of an ``srv`` lookup, given the addresses ``known`` of the SRV targets.

    Each address of each record's target is a backend on the record's port,
    with the record's weight (0 counts as 1); records of the lowest priority
    are primaries, the others backups. An address given twice counts once, from
    its record of lowest priority, then largest weight. The TTL is the smallest
    of those records and addresses.
    """
    if not records:
        return Found(frozenset(), 0.0)
    best = min(srv.priority for srv, _ in records)
    ranked = sorted(records, key=lambda entry: (entry[0].priority, -entry[0].weight))
    targets: List[Target] = []
    ttls: List[float] = []
    for srv, ttl in ranked:
        entries = known.get(str(srv.target).lower().rstrip("."), ())
        for address, address_ttl in entries:
            targets.append(Target(address, srv.port, max(srv.weight, 1), srv.priority != best))
            ttls.append(min(ttl, address_ttl))
    return Found(frozenset(_by_id(targets).values()), min(ttls, default=0.0))


def nameservers(resolv_conf: str) -> List[Tuple[str, int]]:
    """The ``nameserver`` addresses of a resolv.conf(5) text, on port 53; 127.0.0.1 if it names none."""
    servers = []
    for line in resolv_conf.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            servers.append((fields[1].split("%")[0], 53))
    return servers or [("127.0.0.1", 53)]


# --- the Twisted part ------------------------------------------------------------------------

#: A name to look up: ``("dns", (name, port))`` or ``("srv", name)``.
Source = Tuple[str, Union[str, Tuple[str, int]]]


def _records(d: Deferred[Any], additional: bool = False) -> Deferred[Any]:
    """The answer records of a lookup (and the additional ones); a name that does not exist has none."""

    def missing(failure: Failure) -> Any:
        failure.trap(DNSNameError)  # NXDOMAIN; not its parent DomainError, which SERVFAIL is too
        return []

    return d.addCallbacks(lambda sections: [*sections[0], *(sections[2] if additional else ())], missing)


def lookup_addresses(resolver: Any, name: str, timeout: Sequence[float]) -> Deferred[Any]:
    """The A and AAAA records of ``name`` (both queries must be answered), as one list."""
    queries = [
        _records(resolver.lookupAddress(name, timeout)),
        _records(resolver.lookupIPV6Address(name, timeout)),
    ]
    return defer.gatherResults(queries, consumeErrors=True).addCallback(
        lambda results: [record for records in results for record in records]
    )


def lookup(resolver: Any, source: Source, timeout: Sequence[float]) -> Deferred[Any]:
    """A Deferred firing with what ``source`` stands for now (:class:`Found`), or failing."""
    kind, what = source
    if kind == "dns":
        assert isinstance(what, tuple)
        name, port = what
        return lookup_addresses(resolver, name, timeout).addCallback(address_found, port)
    assert isinstance(what, str)

    def targets(records: List[dns.RRHeader]) -> Deferred[Any]:
        srvs = srv_records(records)
        known = addresses(records)  # the additional section usually has them
        missing = sorted({str(srv.target).lower().rstrip(".") for srv, _ in srvs} - set(known))
        more = [lookup_addresses(resolver, name, timeout) for name in missing]

        def found(results: List[List[dns.RRHeader]]) -> Found:
            for records in results:
                for name, entries in addresses(records).items():
                    known.setdefault(name, []).extend(entries)
            return srv_found(srvs, known)

        return defer.gatherResults(more, consumeErrors=True).addCallback(found)

    return _records(resolver.lookupService(what, timeout), additional=True).addCallback(targets)


def make_resolver(
    address: Optional[Tuple[str, int]], reactor: Any, resolv_conf: str = "/etc/resolv.conf"
) -> Any:
    """A non-caching ``twisted.names`` resolver asking ``address``, or the servers of ``resolv_conf``
    (read once, now) when None."""
    from twisted.names.client import Resolver

    if address is not None:
        servers = [address]
    else:
        try:
            with open(resolv_conf, encoding="utf-8", errors="replace") as stream:
                servers = nameservers(stream.read())
        except OSError:
            servers = nameservers("")
    return Resolver(servers=servers, reactor=reactor)


def describe_source(source: Source) -> str:
    """``dns web.internal:8080`` or ``srv _http._tcp.web.service.consul``, for the log."""
    kind, what = source
    return f"{kind} {format_host_port(what) if isinstance(what, tuple) else what}"


class DnsDiscovery(Service):
    """Keeps the backends of ``control`` in line with what DNS names say (see the module docstring).

    ``probe(backend)`` is the health check (a Deferred firing with an HTTP
    status); a new address is probed at once and then every
    ``health_interval`` until one probe passes within ``health_timeout``; only
    then is it added. A vanished one drains and is removed when it has no
    request in flight, or after ``drain_timeout``. Lookups fail after the
    resolver's ``query_timeout``.
    """

    def __init__(
        self,
        sources: Sequence[Source],
        resolver: Any,
        clock: IReactorTime,
        control: BackendControl,
        probe: Optional[Callable[[Backend], Deferred[Any]]],
        timing: Timing,
        health_interval: float,
        health_timeout: float,
        drain_timeout: float,
        query_timeout: Sequence[float] = QUERY_TIMEOUT,
    ) -> None:
        self.sources = list(sources)
        self.resolver = resolver
        self.query_timeout = tuple(query_timeout)
        self._clock = clock
        self._control = control
        self._probe = probe
        self._timing = timing
        self._health_interval = health_interval
        self._health_timeout = health_timeout
        self._drain_timeout = drain_timeout
        self._known: Dict[Source, Dict[str, Target]] = {source: {} for source in self.sources}
        self._failures: Dict[Source, int] = dict.fromkeys(self.sources, 0)
        self._next: Dict[Source, IDelayedCall] = {}
        self._lookups: Dict[Source, Deferred[Any]] = {}
        #: Backends discovery added, by id, with the target last applied to each.
        self._owned: Dict[str, Tuple[Backend, Target]] = {}
        #: Draining owned backends: when each must be removed even with requests in flight.
        self._draining: Dict[str, float] = {}
        #: New targets being health-checked: the probe in flight or the call that sends the next one.
        self._checking: Dict[str, Union[Deferred[Any], IDelayedCall, None]] = {}
        self._drain_loop: Optional[LoopingCall] = None
        #: The id of the backend being added, while ``control.add_backend`` runs.
        self._adding: Optional[str] = None

    def owns(self, backend: Backend) -> bool:
        """Whether discovery added ``backend`` (and so may drain and remove it)."""
        owned = self._owned.get(backend.id)
        return backend.id == self._adding if owned is None else owned[0] is backend

    def release(self, backend: Backend) -> None:
        """Stop managing ``backend`` (a reload made it a static backend); it stays live."""
        if self.owns(backend):
            del self._owned[backend.id]
            if self._draining.pop(backend.id, None) is not None:
                backend.set_state("enabled")

    def status(self) -> List[Dict[str, Any]]:
        """Each name: what it is, the addresses it stands for now, its consecutive failed lookups."""
        return [
            {
                "name": describe_source(source),
                "addresses": sorted(self._known[source]),
                "failures": self._failures[source],
            }
            for source in self.sources
        ]

    def startService(self) -> None:
        """Look every name up now."""
        Service.startService(self)
        for source in self.sources:
            self._lookup(source)

    def stopService(self) -> None:
        """Stop looking up, checking and draining; the backends stay as they are."""
        Service.stopService(self)
        for call in self._next.values():
            if call.active():
                call.cancel()
        self._next.clear()
        lookups, self._lookups = self._lookups, {}
        for d in lookups.values():
            d.cancel()
        for target_id in list(self._checking):
            self._forget(target_id)
        self._stop_drain_loop()

    def _lookup(self, source: Source) -> None:
        self._next.pop(source, None)
        d = lookup(self.resolver, source, self.query_timeout)
        self._lookups[source] = d
        d.addCallbacks(self._looked_up, self._lookup_failed, (source,), {}, (source,))
        d.addErrback(lambda failure: log.failure("DNS discovery for {source} broke", failure, source=source))

    def _lookup_failed(self, failure: Failure, source: Source) -> None:
        if failure.check(defer.FirstError):  # one of several queries failed
            first: Any = failure.value
            failure = first.subFailure
        if failure.check(defer.CancelledError):
            return
        kind = failure.type
        self._looked_up(
            None, source, "error" if kind is None else kind.__name__
        )  # the messages hold whole DNS queries

    def _looked_up(self, found: Optional[Found], source: Source, reason: str = "") -> None:
        self._lookups.pop(source, None)
        if not self.running:
            return
        if found is not None and not found.targets:
            reason = "no addresses"
        known, failures, delay = after_lookup(
            self._known[source], found, self._failures[source], self._timing
        )
        if failures:
            log.warn(
                "DNS lookup for {source} failed ({reason}, {count} in a row); keeping its {known} known "
                "addresses, next try in {delay}s",
                source=describe_source(source),
                reason=reason,
                count=failures,
                known=len(known),
                delay=delay,
            )
        elif self._failures[source]:
            log.info("DNS lookup for {source} answers again", source=describe_source(source))
        self._known[source], self._failures[source] = known, failures
        self._next[source] = self._clock.callLater(delay, self._lookup, source)
        self._apply()

    def _wanted(self) -> Dict[str, Target]:
        """What the names stand for now, all together."""
        return merge([self._known[source] for source in self.sources])

    def _apply(self) -> None:
        """Bring the live backends in line with what the names say now."""
        live = {backend.id: backend for backend in self._control.backends}
        for target_id, (backend, _) in list(self._owned.items()):
            if live.get(target_id) is not backend:  # removed through the API
                del self._owned[target_id]
                self._draining.pop(target_id, None)
        wanted = self._wanted()
        changes = reconcile(
            wanted,
            {target_id: target for target_id, (_, target) in self._owned.items()},
            set(self._draining),
            set(self._checking),
            {target_id for target_id in live if target_id not in self._owned},
        )
        for target_id in changes.forget:
            self._forget(target_id)
        for target_id in changes.check:
            log.info("DNS discovery: new address {id}; probing it before it takes traffic", id=target_id)
            self._checking[target_id] = None
            self._check(wanted[target_id])
        for target_id in changes.undrain:
            del self._draining[target_id]
            self._owned[target_id][0].set_state("enabled")
            log.info("DNS discovery: backend {id} is back in DNS, no longer draining", id=target_id)
        for target in changes.reweight:
            backend = self._owned[target.id][0]
            backend.backup = target.backup
            self._control.set_backend_weight(backend, target.weight)
            self._owned[target.id] = (backend, target)
            log.info(
                "DNS discovery: backend {id} now has weight {weight}{backup}",
                id=target.id,
                weight=target.weight,
                backup=" (backup)" if target.backup else "",
            )
        for target_id in changes.drain:
            self._owned[target_id][0].set_state("draining")
            self._draining[target_id] = self._clock.seconds() + self._drain_timeout
            log.info("DNS discovery: backend {id} left DNS; draining", id=target_id)
        if self._draining and self._drain_loop is None:
            self._drain_loop = LoopingCall(self._remove_drained)
            self._drain_loop.clock = self._clock
            self._drain_loop.start(DRAIN_POLL, now=False)

    def _check(self, target: Target) -> None:
        """Probe a new target; add it if the probe passes, else probe again after ``health_interval``."""
        if self._probe is None:  # health-check: off
            self._admit(target.id)
            return
        d = defer.maybeDeferred(self._probe, Backend(target.spec()))
        d.addTimeout(self._health_timeout, self._clock)
        self._checking[target.id] = d
        d.addBoth(self._checked, target.id, d)

    def _checked(self, result: Union[int, Failure], target_id: str, d: Deferred[Any]) -> None:
        if self._checking.get(target_id) is not d:  # forgotten meanwhile
            return
        if not isinstance(result, Failure) and passes(result):
            del self._checking[target_id]
            self._admit(target_id)
        else:
            self._checking[target_id] = self._clock.callLater(self._health_interval, self._recheck, target_id)

    def _recheck(self, target_id: str) -> None:
        self._check(self._wanted()[target_id])  # still wanted: else reconcile would have forgotten it

    def _admit(self, target_id: str) -> None:
        target = self._wanted()[target_id]
        if any(backend.id == target_id for backend in self._control.backends):
            return  # added meanwhile by a reload or the API: not ours
        self._adding = target_id
        try:
            backend = self._control.add_backend(target.spec())
        finally:
            self._adding = None
        self._owned[target_id] = (backend, target)
        log.info(
            "DNS discovery: backend {url} passed its health check; added with weight {weight}",
            url=backend.url,
            weight=target.weight,
        )

    def _forget(self, target_id: str) -> None:
        pending = self._checking.pop(target_id)
        if isinstance(pending, Deferred) or (pending is not None and pending.active()):
            pending.cancel()

    def _remove_drained(self) -> None:
        now = self._clock.seconds()
        for target_id, deadline in list(self._draining.items()):
            backend = self._owned[target_id][0]
            if backend.in_flight and now < deadline:
                continue
            del self._draining[target_id], self._owned[target_id]
            if backend in self._control.backends:
                self._control.remove_backend(backend)
            log.info("DNS discovery: backend {id} drained and removed", id=target_id)
        if not self._draining:
            self._stop_drain_loop()

    def _stop_drain_loop(self) -> None:
        if self._drain_loop is not None and self._drain_loop.running:
            self._drain_loop.stop()
        self._drain_loop = None


def discovery_for(
    config: Config, reactor: Any, control: BackendControl, probe: Optional[Callable[[Backend], Deferred[Any]]]
) -> DnsDiscovery:
    """The discovery service of ``config``'s ``dns`` and ``srv`` names, over ``control``'s backends."""
    sources: List[Source] = [("dns", target) for target in config.dns]
    if config.srv is not None:
        sources.append(("srv", config.srv))
    return DnsDiscovery(
        sources,
        make_resolver(config.dns_resolver, reactor),
        reactor,
        control,
        probe,
        Timing(config.dns_min_ttl, config.dns_max_ttl),
        health_interval=config.health_interval,
        health_timeout=config.health_timeout,
        drain_timeout=config.drain_timeout,
    )
