"""The cache layer of the request path: answers from the cache, revalidation, coalescing, invalidation.

Every decision is :mod:`powerlb.cachepolicy`'s and the entries live in an
:class:`~powerlb.cache.ICacheStore`; this module applies the decisions to
requests and response events. :class:`CacheLayer` answers a request from the
cache or forwards it (the client-facing code only asks "is there an answer?"),
and response sinks interposed in front of the client's sink store, update,
invalidate, or turn a ``304``/an error into the stored response.

A ``GET`` sent upstream to be stored goes without the client's conditionals
and ``Range`` (:func:`~powerlb.cachepolicy.fetch_headers`): a response that is
stored is held until complete and answered from the stored response, exactly
as a hit would be (``304``, ``206``, ``416``); one that is not stored (or
outgrows ``--cache-max-object``) is streamed, answered with a ``304`` when its
headers match the client's precondition, or only the requested range when its
``Content-Length`` is known, else passed on whole (a ``200`` is a correct
answer to a conditional or range request). A ``Range`` request for a URL
whose whole response could not be stored goes upstream with its ``Range``
instead, and a ``206`` stored from it answers the ranges it covers (RFC 9111
section 3.3). A ``HEAD`` forwarded while a ``GET`` response is stored updates
or invalidates it (RFC 9111 section 4.3.5). A ``POST`` response whose
``Content-Location`` is its target may be stored for later ``GET`` requests
(RFC 9111 section 4).

``X-Cache`` says what happened to each request:

``HIT``
    answered from a fresh stored response;
``MISS``
    sent to a backend (and stored if the policy allows);
``STALE``
    answered from a stale stored response: ``stale-while-revalidate`` (a
    background refresh goes upstream), ``max-stale``, or ``stale-if-error``
    / grace when the backend failed;
``REVALIDATED``
    a backend confirmed the stored response with ``304``: it is answered
    with its headers updated;
``COALESCED``
    answered with the response another request for the same object fetched
    while this one waited;
``BYPASS``
    not a cacheable request (``POST`` and other methods).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure
from zope.interface import implementer

from powerlb import cachepolicy
from powerlb.cache import CachedResponse, ICacheStore, remote_ttl
from powerlb.errors import UpstreamError
from powerlb.headers import Headers, Memo, get_first, strip_hop_by_hop
from powerlb.interfaces import IClientSink, IResponseSink, whole_as_parts
from powerlb.policies import HeaderRules, apply_header_rules
from powerlb.responses import wire_head
from powerlb.stats import Counters
from powerlb.upstream import BodyStream

if TYPE_CHECKING:
    from powerlb.dispatch import Dispatch
    from powerlb.proxy import ClientRequest
    from powerlb.redistier import IRemoteStore

#: Seconds a key whose response could not be stored skips request coalescing.
HIT_FOR_PASS = 60.0
#: Most keys remembered as not storable (the oldest are forgotten first).
MAX_PASSES = 10_000

HIT = b"HIT"
MISS = b"MISS"
STALE = b"STALE"
REVALIDATED = b"REVALIDATED"
COALESCED = b"COALESCED"
BYPASS = b"BYPASS"

#: The Counters attribute each X-Cache result adds one to.
_COUNTERS = {
    HIT: "cache_hits",
    MISS: "cache_misses",
    STALE: "cache_stale",
    REVALIDATED: "cache_revalidated",
    COALESCED: "cache_coalesced",
    BYPASS: "cache_bypass",
}

#: Upstream statuses that count as an error for stale-if-error (RFC 5861 section 4).
_ERROR_STATUSES = frozenset({500, 502, 503, 504})

#: Most keys whose hit head :meth:`CacheLayer.fast_response` remembers (then it starts afresh).
MAX_HIT_HEADS = 4096


class CacheLayer:
    """One instance's cache as the request path uses it.

    ``targeted`` is the target list of targeted Cache-Control field names
    (RFC 9213 section 2.1; those but ``CDN-Cache-Control`` are not forwarded),
    ``grace`` the seconds a stale response may stand in for a failed backend,
    ``lock_timeout`` how long concurrent misses wait for the one request sent
    upstream, ``purge_allow`` the networks allowed to send ``PURGE``.
    """

    def __init__(
        self,
        store: ICacheStore,
        clock: IReactorTime,
        counters: Counters,
        max_object: int,
        *,
        targeted: Sequence[str] = ("CDN-Cache-Control",),
        grace: float = 0.0,
        lock_timeout: float = 5.0,
        purge_allow: Sequence[str] = (),
    ) -> None:
        self.store = store
        self.clock = clock
        self.counters = counters
        self.max_object = max_object
        self.targeted = tuple(name.lower().encode("ascii") for name in targeted)
        #: The targeted fields for this cache alone: never forwarded.
        self.strip = cachepolicy.own_targeted(self.targeted)
        self.grace = grace
        self.lock_timeout = lock_timeout
        self.purge_allow = [ipaddress.ip_network(network) for network in purge_allow]
        #: Keys with a request on its way upstream, and who waits for it.
        self.flights: Dict[bytes, _Flight] = {}
        #: The shared second cache tier (powerlb.redistier.IRemoteStore), None without one.
        self.remote: Optional[IRemoteStore] = None
        #: Keys whose last response could not be stored, and until when their misses skip coalescing.
        self.passes: OrderedDict[bytes, float] = OrderedDict()
        #: The last head :meth:`fast_response` wrote for a key's plain requests.
        self.hit_heads: Memo[bytes, _HitHead] = Memo(MAX_HIT_HEADS)

    # -- the request path ------------------------------------------------

    def send(self, client: ClientRequest, body: Union[bytes, BodyStream], sink: IClientSink) -> None:
        """Answer a client request from the cache, or send it on to its plan's dispatcher.

        ``client`` is the parsed :class:`~powerlb.proxy.ClientRequest` (its plan allows the cache),
        ``body`` its body, ``sink`` the client's response sink: every answer, stored or fetched,
        reaches it as response events, after :meth:`IClientSink.cache_result` says which.
        """
        if client.method == b"PURGE":
            self._purge_request(client, sink)
            return
        key = client.cache_key()
        if not cachepolicy.request_is_cacheable(client.method, client.headers):
            self.count(BYPASS)
            if client.method == b"POST":
                relay: IResponseSink = PostSink(self, sink, client, key, self.clock.seconds())
            else:
                relay = Relay(self, sink, client)
            _forward(client, body, relay, sink, BYPASS)
            return
        directives = client.directives
        now = self.clock.seconds()
        entry = self.lookup(key, client.method, client.headers)
        use = None
        if entry is not None:
            use = cachepolicy.reuse(entry.freshness_lifetime, entry.age(now), entry.rules, directives)
        if entry is not None and use == cachepolicy.FRESH:
            self.serve(sink, client, entry, now, HIT)
            return
        if entry is not None and use in (cachepolicy.STALE, cachepolicy.STALE_WHILE_REVALIDATE):
            if use == cachepolicy.STALE_WHILE_REVALIDATE:
                self._refresh(key, client, entry)
            self.serve(sink, client, entry, now, STALE)
            return
        if b"only-if-cached" in directives:
            self.count(MISS)
            sink.own_answer(504, "only-if-cached, and no stored response may be used")
            return
        if client.method != b"GET":
            self.count(MISS)
            if entry is None:
                relay = Relay(self, sink, client)
            else:
                relay = HeadSink(self, sink, client, key, entry, now)
            _forward(client, body, relay, sink, MISS)
            return
        flight = self.flights.get(key)
        lead = b"no-cache" not in directives and not self._passing(key, now)
        if flight is not None and lead:
            flight.wait(self, sink, client, body, key)
            return
        self.fetch(sink, client, body, key, entry, lead=lead)

    def fetch(
        self,
        sink: IClientSink,
        client: ClientRequest,
        body: Union[bytes, BodyStream],
        key: bytes,
        entry: Optional[CachedResponse],
        lead: bool,
    ) -> None:
        """Forward a GET the cache could not answer, revalidating ``entry`` (the stored response) if any.

        With ``lead`` the request is the one concurrent misses for ``key`` wait for. A ``Range``
        request for a key that could not be stored whole (hit-for-pass) goes upstream with its
        ``Range``, so that the ``206`` can be stored and answer the ranges it covers.
        """
        flight = None
        if lead:
            flight = self.flights[key] = _Flight()
            sink.when_done().addBoth(lambda _: self.land(key, flight))
            # -- second cache tier (powerlb.redistier): a local miss asks the shared store first --
            if entry is None and self.remote is not None:
                self.remote.get(key).addCallback(self._remote_found, sink, client, body, key, flight)
                return
        self._send(sink, client, body, key, entry, flight)

    def _remote_found(
        self,
        entries: List[CachedResponse],
        sink: IClientSink,
        client: ClientRequest,
        body: Union[bytes, BodyStream],
        key: bytes,
        flight: _Flight,
    ) -> None:
        """The shared tier's variants of ``key`` arrived: they join the local tier; a fresh one
        answers (``HIT``), else the request goes upstream in its flight as it would have."""
        for found in entries:
            self.store.put(key, found)
        if self.flights.get(key) is not flight:
            return  # the client went away meanwhile
        now = self.clock.seconds()
        entry = self.lookup(key, client.method, client.headers)
        directives = client.directives
        if entry is not None and (
            cachepolicy.reuse(entry.freshness_lifetime, entry.age(now), entry.rules, directives)
            == cachepolicy.FRESH
        ):
            self.land(key, flight)
            self.serve(sink, client, entry, now, HIT)
        else:
            self._send(sink, client, body, key, entry, flight)
        # -- end of the second cache tier's hook --

    def _send(
        self,
        sink: IClientSink,
        client: ClientRequest,
        body: Union[bytes, BodyStream],
        key: bytes,
        entry: Optional[CachedResponse],
        flight: Optional[_Flight],
    ) -> None:
        """Forward the GET :meth:`fetch` could not answer, as the lead of ``flight`` or alone (None)."""
        now = self.clock.seconds()
        lead = flight is not None
        shaped = client.shaped
        answers = shaped and cachepolicy.answered_by_cache(client.headers)
        # A range of an object that was not stored whole (hit-for-pass) goes upstream as asked:
        # the backend sends only that range, and its 206 may be stored.
        ranged = (
            shaped
            and entry is None
            and not lead
            and get_first(client.headers, b"range") is not None
            and self._passing(key, now)
        )
        upstream, conditional = (client, False) if ranged else self._upstream_client(client, entry, answers)
        fetch = FetchSink(self, sink, key, client, entry, now, flight, conditional, answers)
        _forward(upstream, body, fetch, sink, MISS)

    def lookup(self, key: bytes, method: bytes, headers: Headers) -> Optional[CachedResponse]:
        """The stored response of ``key`` that may answer a ``method`` request with ``headers``, fresh
        or stale: the variant they select, unless it is a ``206`` without the range asked
        (:func:`cachepolicy.covers`)."""
        entry = self.store.get(key, headers)
        if entry is None or not cachepolicy.covers(method, headers, entry.status, entry.headers):
            return None
        return entry

    def serve(
        self, sink: IClientSink, client: ClientRequest, entry: CachedResponse, now: float, x_cache: bytes
    ) -> None:
        """Answer the client's ``sink`` from ``entry`` (counted as ``x_cache``), with the same events
        as a fetched response."""
        self.count(x_cache)
        sink.cache_result(x_cache)
        _answer(sink, self.answer(client.method, client.headers, entry, now))

    def fast_response(
        self, key: bytes, method: bytes, headers: Headers, rules: Optional[HeaderRules]
    ) -> Optional[Tuple[bytes, bytes]]:
        """The response (head, body) to a plain ``GET``/``HEAD`` for ``key`` that a fresh stored response
        answers (with the response header ``rules``, None: none), else None.

        The client-facing channel's short way for cache hits (no twisted.web
        request is built; see :meth:`powerlb.proxy.ProxyResource.fast_response`): the same store, policy
        and answer as :meth:`send`, counted the same; None leaves the request to the normal way.
        """
        entry = self.lookup(key, method, headers)
        if entry is None:
            return None
        now = self.clock.seconds()
        age = entry.age(now)
        plain = True
        for name, _ in headers:
            if name in cachepolicy.SHAPING_FIELDS:
                plain = False
                break
        directives = cachepolicy.NO_DIRECTIVES if plain else cachepolicy.request_directives(headers)
        if cachepolicy.reuse(entry.freshness_lifetime, age, entry.rules, directives) != cachepolicy.FRESH:
            return None
        self.counters.cache_hits += 1  # as self.count(HIT), without its look-ups
        seconds = int(age)  # the Age field's value, unless past its cap (then the head is made again)
        remembered = self.hit_heads.get(key) if plain else None
        if remembered is not None and remembered.answers(entry, rules, seconds):
            return remembered.head, entry.body if method != b"HEAD" else b""
        answer = self.answer(method, headers, entry, now)
        if rules is not None:
            answer = answer._replace(headers=apply_header_rules(rules, answer.headers))
        head, dated = wire_head(answer, HIT)
        if plain and dated:
            # The head of a plain request's answer (a HEAD's is a GET's) stays the same until the
            # Age changes: it is made once per key and second, not once per hit.
            self.hit_heads.remember(key, _HitHead(entry, rules, seconds, head))
        return head, answer.body if method != b"HEAD" else b""  # a HEAD's answer has no body

    def answer(
        self, method: bytes, headers: Headers, entry: CachedResponse, now: float
    ) -> cachepolicy.Answer:
        """What to send a ``method`` request with ``headers`` from ``entry`` at ``now``."""
        return cachepolicy.cached_answer(
            method,
            headers,
            entry.status,
            entry.reason,
            entry.headers,
            entry.body,
            entry.age(now),
            self.strip,
        )

    def count(self, x_cache: bytes) -> None:
        """Add one to the counter of the result ``x_cache``."""
        name = _COUNTERS[x_cache]
        setattr(self.counters, name, getattr(self.counters, name) + 1)

    def put(self, key: bytes, entry: CachedResponse) -> None:
        """Store ``entry`` under ``key`` (counted when the store takes it)."""
        if self.store.put(key, entry):
            self.counters.cache_stores += 1
            if self.remote is not None:  # the second cache tier (powerlb.redistier): write-through
                ttl = remote_ttl(entry, self.grace, self.clock.seconds())
                self.remote.put(key, entry, ttl)

    def update(
        self,
        key: bytes,
        client: ClientRequest,
        entry: CachedResponse,
        headers: Headers,
        request_time: float,
        now: float,
    ) -> CachedResponse:
        """``entry`` updated from the ``headers`` of a 304 or of a HEAD response (RFC 9111 sections 3.2,
        4.3.4 and 4.3.5): its headers and times; stored in its place, or ``key`` removed when it may
        no longer be stored."""
        merged = cachepolicy.update_headers(entry.headers, headers)
        plan = cachepolicy.plan_store(
            b"GET", client.headers, entry.status, merged, request_time, now, self.targeted
        )
        stored = plan is not None
        if plan is None:
            plan = cachepolicy.StorePlan(0.0, 0.0, entry.vary, now)
        # The age comes from the new response: the stored Date and Age describe the old one.
        plan = plan._replace(initial_age=cachepolicy.corrected_initial_age(headers, request_time, now))
        updated = CachedResponse.from_plan(
            plan, entry.status, entry.reason, merged, entry.body, client.headers
        )
        if stored:
            self.put(key, updated)
        else:
            self.store.remove(key)
        return updated

    def mark_pass(self, key: bytes, now: float) -> None:
        """``key``'s response could not be stored: for :data:`HIT_FOR_PASS` seconds its misses go
        upstream at once instead of queueing behind each other (Varnish's hit-for-pass)."""
        passes = self.passes
        passes[key] = now + HIT_FOR_PASS
        passes.move_to_end(key)
        if len(passes) > MAX_PASSES:
            passes.popitem(last=False)

    def _passing(self, key: bytes, now: float) -> bool:
        until = self.passes.get(key)
        if until is None:
            return False
        if until > now:
            return True
        del self.passes[key]
        return False

    def land(self, key: bytes, flight: _Flight) -> None:
        """``flight`` is over (stored, not storable, failed or abandoned): release who waits for it."""
        if self.flights.get(key) is flight:
            del self.flights[key]
            for waiter in flight.take():
                waiter.resume(self, key)

    # -- invalidation and purge ----------------------------------------

    def invalidate(self, client: ClientRequest, status: int, headers: Headers) -> None:
        """Drop what a response to an unsafe request invalidates (RFC 9111 section 4.4)."""
        keys = cachepolicy.invalidation_keys(
            client.method, status, client.scheme, client.host or b"", client.target, headers
        )
        for key in keys:
            self.counters.cache_invalidated += self.store.remove(key)
        if keys and self.remote is not None:  # the shared tier and the other instances drop them too
            self.remote.invalidated(keys)

    def purge(self, key: bytes, prefix: bool = False) -> int:
        """Remove every stored response of ``key`` (or of every key starting with it); how many."""
        keys = [k for k in self.store.keys() if k.startswith(key)] if prefix else [key]  # noqa: SIM118
        removed = sum(self.store.remove(k) for k in keys)
        self.counters.cache_purged += removed
        return removed

    def _purge_request(self, client: ClientRequest, sink: IClientSink) -> None:
        if not self._purge_allowed(client.client_host):
            sink.own_answer(403, "PURGE is not allowed from this address (see purge-allow)")
            return
        removed = self.purge(cachepolicy.primary_key(client.scheme, client.host or b"", client.target))
        if removed:
            sink.own_answer(200, f"purged {removed} stored response(s)")
        else:
            sink.own_answer(404, "nothing stored for this URL")

    def _purge_allowed(self, client_host: bytes) -> bool:
        try:
            address = ipaddress.ip_address(client_host.decode("ascii"))
        except ValueError:
            return False
        return any(address in network for network in self.purge_allow)

    # -- revalidation ----------------------------------------------------

    def _upstream_client(
        self, client: ClientRequest, entry: Optional[CachedResponse], answers: bool
    ) -> Tuple[ClientRequest, bool]:
        """``client`` as a GET sent upstream to store the response, and whether it revalidates ``entry``.

        A conditional GET when ``entry`` has a validator (RFC 9111 section 4.3.1), else one
        without the client's conditionals and range (:func:`cachepolicy.fetch_headers`; ``answers``
        is :func:`cachepolicy.answered_by_cache` of the client's headers): a plain GET is sent as is.
        """
        if entry is not None and cachepolicy.has_validator(entry.headers):
            headers = cachepolicy.revalidation_headers(client.headers, entry.headers)
            return client.with_method_and_headers(b"GET", headers), True
        headers = cachepolicy.fetch_headers(client.headers, answers)
        if headers is client.headers and client.method == b"GET":
            return client, False
        return client.with_method_and_headers(b"GET", headers), False

    def _refresh(self, key: bytes, client: ClientRequest, entry: CachedResponse) -> None:
        """Revalidate ``entry`` in the background (RFC 5861 section 3), unless a request for it is out."""
        if key in self.flights:
            return
        flight = self.flights[key] = _Flight()
        answers = cachepolicy.answered_by_cache(client.headers)
        upstream, conditional = self._upstream_client(client, entry, answers)
        sink = FetchSink(
            self,
            _Discard(),
            key,
            client,
            entry,
            self.clock.seconds(),
            flight,
            conditional,
            answers,
            background=True,
        )
        upstream.send(b"", sink)


class _Waiter:
    """A request waiting for another one's response to the same object (request coalescing)."""

    __slots__ = ("body", "client", "flight", "gone", "sink", "timer")

    def __init__(
        self, flight: _Flight, sink: IClientSink, client: ClientRequest, body: Union[bytes, BodyStream]
    ) -> None:
        self.flight = flight
        self.sink = sink
        self.client = client
        self.body = body
        self.gone = False
        self.timer: IDelayedCall

    def resume(self, layer: CacheLayer, key: bytes) -> None:
        """Answer with the stored response if it is fresh now, else go upstream alone."""
        self.timer.cancel()
        if self.gone:
            return
        now = layer.clock.seconds()
        entry = layer.lookup(key, self.client.method, self.client.headers)
        directives = self.client.directives
        if entry is not None and (
            cachepolicy.reuse(entry.freshness_lifetime, entry.age(now), entry.rules, directives)
            == cachepolicy.FRESH
        ):
            layer.serve(self.sink, self.client, entry, now, COALESCED)
        else:
            layer.fetch(self.sink, self.client, self.body, key, entry, lead=False)

    def give_up(self, layer: CacheLayer, key: bytes) -> None:
        """The lock timeout passed: stop waiting and go upstream alone."""
        self.flight.waiters.remove(self)
        entry = layer.lookup(key, self.client.method, self.client.headers)
        layer.fetch(self.sink, self.client, self.body, key, entry, lead=False)

    def leave(self, failure: Failure) -> None:
        """The client went away while waiting."""
        self.gone = True
        if self in self.flight.waiters:
            self.flight.waiters.remove(self)
            self.timer.cancel()


class _HitHead:
    """The head :meth:`CacheLayer.fast_response` wrote for a plain request answered by a stored
    response: the same for the next one while that response, the header rules and the ``Age`` are
    (the age in whole seconds it was made for: the same whole seconds, the same ``Age`` field).

    It holds the stored response's headers (never changed once stored), not the response: a
    remembered head never keeps a removed body alive.
    """

    __slots__ = ("age", "head", "headers", "length", "reason", "rules", "status")

    def __init__(self, entry: CachedResponse, rules: Optional[HeaderRules], age: int, head: bytes) -> None:
        self.headers = entry.headers
        self.status = entry.status
        self.reason = entry.reason
        self.length = len(entry.body)
        self.rules = rules
        self.age = age
        self.head = head

    def answers(self, entry: CachedResponse, rules: Optional[HeaderRules], age: int) -> bool:
        """Whether this is the head for ``entry`` with ``rules`` at ``age`` (whole seconds)."""
        return (
            entry.headers is self.headers
            and rules is self.rules
            and age == self.age
            and entry.status == self.status
            and entry.reason == self.reason
            and len(entry.body) == self.length
        )


class _Flight:
    """One request on its way upstream for a key, and the requests waiting for its response."""

    __slots__ = ("waiters",)

    def __init__(self) -> None:
        self.waiters: List[_Waiter] = []

    def wait(
        self,
        layer: CacheLayer,
        sink: IClientSink,
        client: ClientRequest,
        body: Union[bytes, BodyStream],
        key: bytes,
    ) -> None:
        """Make the request wait for this flight, at most ``layer.lock_timeout`` seconds."""
        waiter = _Waiter(self, sink, client, body)
        waiter.timer = layer.clock.callLater(layer.lock_timeout, waiter.give_up, layer, key)
        self.waiters.append(waiter)
        sink.when_done().addErrback(waiter.leave)

    def take(self) -> List[_Waiter]:
        """The waiters, no longer waiting."""
        waiters, self.waiters = self.waiters, []
        return waiters


@implementer(IResponseSink)
class Relay:
    """Passes an upstream response on to the next sink without the targeted fields for this cache alone.

    After a request with an unsafe method it invalidates what the response
    says changed (RFC 9111 section 4.4).
    """

    def __init__(self, layer: CacheLayer, sink: IResponseSink, client: ClientRequest) -> None:
        self.layer = layer
        self.sink = sink
        self.client = client

    def interim_received(self, status: int, reason: bytes, headers: Headers) -> None:
        """Interim (1xx) responses go on to the client's sink; never stored, never the response."""
        self.sink.interim_received(status, reason, headers)

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        self.sink.head_received(status, reason, self._relayed(status, headers))

    def body_received(self, data: bytes) -> None:
        self.sink.body_received(data)

    def response_ended(self) -> None:
        self.sink.response_ended()

    def response_received(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        self.sink.response_received(status, reason, self._relayed(status, headers), body)

    def request_failed(self, error: UpstreamError) -> None:
        self.sink.request_failed(error)

    def _relayed(self, status: int, headers: Headers) -> Headers:
        """The response ``headers`` as they go on; what they say changed is invalidated first."""
        client = self.client
        if client.method not in cachepolicy.SAFE_METHODS:  # a safe method's response invalidates nothing
            self.layer.invalidate(client, status, headers)
        strip = self.layer.strip
        if strip:
            headers = [(k, v) for k, v in headers if k not in strip]
        return headers


class HeadSink(Relay):
    """The response to a HEAD forwarded while ``entry``, a stored GET response, could answer it.

    A ``200`` whose validators and ``Content-Length`` match ``entry``
    updates its headers and freshness as a ``304`` would; one that does not
    removes it (RFC 9111 section 4.3.5). The response is passed on as is.
    """

    def __init__(
        self,
        layer: CacheLayer,
        sink: IResponseSink,
        client: ClientRequest,
        key: bytes,
        entry: CachedResponse,
        request_time: float,
    ) -> None:
        super().__init__(layer, sink, client)
        self.key = key
        self.entry = entry
        self.request_time = request_time

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        layer, entry = self.layer, self.entry
        outcome = cachepolicy.head_update(status, headers, entry.status, entry.headers, len(entry.body))
        if outcome == cachepolicy.UPDATE:
            layer.update(self.key, self.client, entry, headers, self.request_time, layer.clock.seconds())
        elif outcome == cachepolicy.INVALIDATE:
            layer.counters.cache_invalidated += layer.store.remove(self.key)
        super().head_received(status, reason, headers)

    def response_received(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        whole_as_parts(self, status, reason, headers, body)


class PostSink(Relay):
    """The response to a POST, passed on; stored for later GET requests of its target when it has
    explicit freshness and its ``Content-Location`` is that target (RFC 9111 section 4, RFC 9110
    section 9.3.3), after invalidating what it replaces (section 4.4)."""

    def __init__(
        self, layer: CacheLayer, sink: IResponseSink, client: ClientRequest, key: bytes, request_time: float
    ) -> None:
        super().__init__(layer, sink, client)
        self.key = key
        self.request_time = request_time
        self.plan: Optional[cachepolicy.StorePlan] = None
        self.parts: Optional[List[bytes]] = None
        self.size = 0
        self.head: Tuple[int, bytes, Headers] = (0, b"", [])

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        super().head_received(status, reason, headers)
        layer = self.layer
        plan = cachepolicy.plan_store(
            b"POST",
            self.client.headers,
            status,
            headers,
            self.request_time,
            layer.clock.seconds(),
            layer.targeted,
            self.key,
        )
        length = _content_length(headers)
        if plan is not None and (length is None or length <= layer.max_object):
            self.plan, self.parts, self.head = plan, [], (status, reason, headers)

    def body_received(self, data: bytes) -> None:
        if self.parts is not None:
            self.size += len(data)
            if self.size <= self.layer.max_object:
                self.parts.append(data)
            else:
                self.parts = None
        super().body_received(data)

    def response_ended(self) -> None:
        if self.parts is not None and self.plan is not None:
            status, reason, headers = self.head
            body = b"".join(self.parts)
            entry = CachedResponse.from_plan(self.plan, status, reason, headers, body, self.client.headers)
            self.layer.put(self.key, entry)
        super().response_ended()

    def response_received(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        whole_as_parts(self, status, reason, headers, body)


class FetchSink(Relay):
    """The response to a GET the cache sent upstream, on its way to the next sink.

    It keeps a copy to store when the policy allows (a body that grows past
    the object size limit stops being kept but is passed on whole; a failed
    or aborted response is never stored). With ``conditional`` (a
    revalidation of ``entry``) a ``304`` updates the stored response and the
    updated response is passed on instead (RFC 9111 section 4.3.4). When the
    backend fails or answers 500/502/503/504 and ``entry`` may be served stale
    (RFC 5861 section 4), ``entry`` is passed on instead. Waiters of
    ``flight`` are released once the outcome is stored.

    When the client's conditionals and range were not sent upstream
    (:func:`cachepolicy.answered_by_cache`), a response to store is held
    until complete and the client answered from the stored response, as a
    hit is; any other response is answered from its head
    (:meth:`_pass_head`).

    What it holds: the chunks it is passed, as they are (the same ``bytes``
    objects the dispatch held and the client's sink writes, no copy), up to
    ``max_object`` bytes;
    they are joined once, when the complete response is stored, into the
    stored body (a body of one chunk is that chunk, not a copy). That join is
    the one copy of a stored response on its way; a response that is not
    stored is never held here.

    A response that will not be stored is decided on from its head, once:
    then each body chunk is passed straight on.
    """

    #: The response head is held back, to answer from the stored response once complete.
    held = False
    #: The (first, last) body bytes passed on, when only a range of the body is; and the offset.
    span: Optional[Tuple[int, int]] = None
    offset = 0
    done = False
    plan: Optional[cachepolicy.StorePlan] = None
    #: The body chunks kept to store (None: nothing is kept), and their size.
    parts: Optional[List[bytes]] = None
    size = 0
    status = 0
    reason = b""
    headers: Headers
    #: The body length the response head announces (:func:`_content_length`), read once when needed.
    length: Optional[int] = None

    def __init__(
        self,
        layer: CacheLayer,
        sink: IClientSink,
        key: bytes,
        client: ClientRequest,
        entry: Optional[CachedResponse],
        request_time: float,
        flight: Optional[_Flight],
        conditional: bool,
        answers: bool,
        background: bool = False,
    ) -> None:
        super().__init__(layer, sink, client)
        self.sink: IClientSink = sink
        self.key = key
        self.entry = entry
        self.request_time = request_time
        self.flight = flight
        self.conditional = conditional
        #: The client's conditionals and range were left out upstream (:func:`cachepolicy.answered_by_cache`
        #: of its headers): the cache answers them.
        self.answers = answers
        #: A background refresh: no client request's result to count.
        self.background = background

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        now = self.layer.clock.seconds()
        if self._take_head(status, reason, headers, now):
            self._pass_head(now)

    def response_received(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        now = self.layer.clock.seconds()
        passed = self._take_head(status, reason, headers, now)
        if not passed or self.answers:
            # Replayed or held (the rest is heard as events), or the head answers a conditional or range.
            if passed:
                self._pass_head(now)
            if body:
                self.body_received(body)
            self.response_ended()
            return
        if self.parts is not None:
            self.size = len(body)
            if self.size <= self.layer.max_object:
                self.parts.append(body)
            else:
                self.parts = None
        self._store()
        self._land()
        super().response_received(status, reason, headers, body)

    def _take_head(self, status: int, reason: bytes, headers: Headers, now: float) -> bool:
        """Decide on the response from its head (replay a stored response instead, keep it to store,
        hold it back): whether the head is to be passed on now."""
        layer = self.layer
        entry = self.entry
        if entry is not None and self.conditional and status == 304:
            updated = layer.update(self.key, self.client, entry, headers, self.request_time, now)
            self._replay(updated, now, REVALIDATED)
            return False
        stale = self._stale(now) if status in _ERROR_STATUSES else None
        if stale is not None:
            self._replay(stale, now, STALE)
            return False
        client = self.client
        plan = cachepolicy.plan_store(
            b"GET",
            client.headers,
            status,
            headers,
            self.request_time,
            now,
            layer.targeted,
            request=client.directives,
        )
        self.status, self.reason, self.headers = status, reason, headers
        if plan is not None or self.answers:
            self.length = _content_length(headers)
        if plan is not None and (self.length is None or self.length <= layer.max_object):
            self.plan, self.parts = plan, []
            self.held = self.answers
            if status != 206:
                layer.passes.pop(self.key, None)
        else:
            # Nothing will be stored: whoever waits for this response may go upstream now.
            layer.mark_pass(self.key, now)
            self._release()
        self._count(MISS)
        return not self.held

    def body_received(self, data: bytes) -> None:
        parts = self.parts
        if parts is None and self.span is None:  # nothing kept, all passed on
            if not self.done:
                self.sink.body_received(data)
            return
        if self.done:
            return
        if parts is not None:
            self.size += len(data)
            if self.size <= self.layer.max_object:
                parts.append(data)
                if self.held:
                    return
            else:
                self.parts = None
                if self.held:
                    self.held = False
                    self._pass_head(self.layer.clock.seconds())
                    for part in parts:
                        self._pass_body(part)
        self._pass_body(data)

    def response_ended(self) -> None:
        if self.done:
            return
        entry = self._store()
        if entry is not None and self.held:
            self._serve(entry, self.layer.clock.seconds())
            return
        self._land()
        self.sink.response_ended()

    def request_failed(self, error: UpstreamError) -> None:
        if self.done:
            return
        self.parts = None
        now = self.layer.clock.seconds()
        stale = self._stale(now)
        if stale is not None:
            self._replay(stale, now, STALE)
            return
        self._land()
        self._count(MISS)
        self.sink.request_failed(error)

    # -- internals -------------------------------------------------------

    def _store(self) -> Optional[CachedResponse]:
        """Store the complete response when it is kept to store: the entry stored, else None."""
        if self.parts is None or self.plan is None:
            return None
        entry = CachedResponse.from_plan(
            self.plan, self.status, self.reason, self.headers, b"".join(self.parts), self.client.headers
        )
        self.layer.put(self.key, entry)
        return entry

    def _pass_head(self, now: float) -> None:
        """Pass the response head on, or the answer to the client's conditional or range made from it.

        Only when cheap: a ``304`` needs the headers alone, a ``206``/``416``
        a known ``Content-Length`` (and then only the range's bytes follow).
        Otherwise the whole response is passed on.
        """
        status, reason, headers = self.status, self.reason, self.headers
        if self.answers:
            answer, span = cachepolicy.answer_head(
                self.client.method,
                self.client.headers,
                status,
                reason,
                strip_hop_by_hop(headers),
                self.length,
                cachepolicy.corrected_initial_age(headers, self.request_time, now),
                self.layer.strip,
            )
            if span is not None:
                self.span = span
                super().head_received(answer.status, answer.reason, answer.headers)
                if span == cachepolicy.NO_BODY:
                    self._land()
                    self.sink.response_ended()
                return
        super().head_received(status, reason, headers)

    def _pass_body(self, data: bytes) -> None:
        """Pass ``data`` on, or its part within :attr:`span`; end the answer after the span's last byte."""
        span = self.span
        if span is None:
            self.sink.body_received(data)
            return
        first, last = span
        start = self.offset
        self.offset += len(data)
        piece = data[max(0, first - start) : max(0, last + 1 - start)]
        if piece:
            self.sink.body_received(piece)
        if self.offset > last:
            self._land()
            self.sink.response_ended()

    def _stale(self, now: float) -> Optional[CachedResponse]:
        """The stored response that may stand in for a failed backend now (RFC 5861 section 4), if any."""
        entry = self.entry
        if entry is not None and cachepolicy.stale_on_error(
            entry.freshness_lifetime,
            entry.age(now),
            entry.rules,
            self.client.directives,
            self.layer.grace,
        ):
            return entry
        return None

    def _count(self, x_cache: bytes) -> None:
        if not self.background:
            self.layer.count(x_cache)

    def _land(self) -> None:
        self.done = True
        self._release()

    def _release(self) -> None:
        """Release the requests waiting for this response (once)."""
        flight, self.flight = self.flight, None
        if flight is not None:
            self.layer.land(self.key, flight)

    def _replay(self, entry: CachedResponse, now: float, x_cache: bytes) -> None:
        """Pass ``entry`` on instead of the backend's response (whose rest is ignored)."""
        self._count(x_cache)
        self.sink.cache_result(x_cache)
        self._serve(entry, now)

    def _serve(self, entry: CachedResponse, now: float) -> None:
        """Answer the client from ``entry`` as a hit is answered (``304``, ``206``, ...), and end."""
        self._land()
        _answer(self.sink, self.layer.answer(self.client.method, self.client.headers, entry, now))


def _content_length(headers: Headers) -> Optional[int]:
    """The body length a response head announces: a valid ``Content-Length`` without ``Transfer-Encoding``."""
    if get_first(headers, b"transfer-encoding") is not None:
        return None
    value = get_first(headers, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


@implementer(IClientSink)
class _Discard:
    """The sink of a background refresh: nobody waits for the response itself."""

    def cache_result(self, x_cache: bytes) -> None:
        pass

    def start(self, dispatch: Dispatch) -> None:
        pass

    def own_answer(self, status: int, reason: str) -> None:
        pass

    def when_done(self) -> Deferred[None]:
        return Deferred()

    def interim_received(self, status: int, reason: bytes, headers: Headers) -> None:
        pass

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        pass

    def body_received(self, data: bytes) -> None:
        pass

    def response_ended(self) -> None:
        pass

    def response_received(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        pass

    def request_failed(self, error: UpstreamError) -> None:
        pass


def _answer(sink: IResponseSink, answer: cachepolicy.Answer) -> None:
    """Pass ``answer`` (made from a stored response) on to ``sink`` as a fetched response would be."""
    sink.response_received(answer.status, answer.reason, answer.headers, answer.body)


def _forward(
    upstream: ClientRequest,
    body: Union[bytes, BodyStream],
    relay: IResponseSink,
    sink: IClientSink,
    x_cache: bytes,
) -> None:
    """Send ``upstream`` on to its plan's dispatcher, its response to ``relay`` (which passes it on to
    the client's ``sink``), counted as ``x_cache``."""
    sink.cache_result(x_cache)
    sink.start(upstream.send(body, relay))
