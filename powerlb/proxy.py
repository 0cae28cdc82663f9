"""The request path: a twisted.web Resource that serves from the cache or proxies to a backend.

:class:`ProxyResource` receives every client request, asks the planner
(:class:`~powerlb.plan.IPlanner`) what to do with it, and hands it down one
way: to the cache layer when the route uses the cache, which answers it or
sends it on, else straight to the plan's
:class:`~powerlb.dispatch.Dispatcher`, which hands it to the
:class:`~powerlb.upstream.ProxyClientFactory` of the backend the balancer
picks. Every answer, stored or fetched, reaches the client's
:class:`ClientResponder` as response events, which it writes to the
twisted.web request. See docs/architecture.md. Decisions come from the pure modules (``headers``,
``cachepolicy``, ``balancing``); this module only wires them to twisted.web.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, FrozenSet, Optional, Tuple, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from powerlb import cachepolicy
from powerlb.caching import CacheLayer
from powerlb.dispatch import Dispatch, UpstreamRequest
from powerlb.errors import UpstreamError
from powerlb.headers import (
    Headers,
    connection_tokens,
    forward_request_headers,
    forward_response_headers,
    get_first,
    strip_hop_by_hop,
)
from powerlb.http11 import serialize_interim
from powerlb.interfaces import FastResponse, IClientSink, IResponseSink
from powerlb.plan import Decision, IPlanner, RequestPlan
from powerlb.policies import apply_header_rules, cache_key, peer_host, rewrite_path
from powerlb.responses import error_response, set_response_headers
from powerlb.routing import Route
from powerlb.stats import Counters
from powerlb.sticky import StickyCookie
from powerlb.tunnel import is_upgrade, upgrade_request_headers
from powerlb.upstream import BodyStream

if TYPE_CHECKING:
    from powerlb.server import ProxyRequest


class ClientRequest:
    """What the request path needs to know of a client request, parsed once."""

    __slots__ = (
        "_connection",
        "_directives",
        "_shaped",
        "client_host",
        "headers",
        "host",
        "method",
        "plan",
        "request_id_header",
        "route_work",
        "scheme",
        "target",
        "upgrade",
    )

    def __init__(self, request: ProxyRequest, request_id_header: bytes = b"x-request-id") -> None:
        self.method: bytes = request.method
        parsed = getattr(request, "parsed_headers", None)
        if parsed is not None:
            # A ProxyChannel's one-pass parse: a plain request (no Connection or Upgrade), its target
            # origin-form; the connection knows its scheme and client.
            channel = request.channel
            self.headers: Headers = parsed
            self.target, self.host = request.uri, get_first(parsed, b"host")
            self.scheme: bytes = channel.scheme
            self.client_host: bytes = channel.client_host
            #: For an upgrade request (WebSocket...): its connection, which a 101 turns into a tunnel;
            #: else None.
            self.upgrade: Any = None
        else:
            self.headers = [
                (name.lower(), value)
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ]
            self.target, self.host = _origin_form(request.uri, get_first(self.headers, b"host"))
            self.scheme = b"https" if request.isSecure() else b"http"
            self.client_host = peer_host(request.getClientAddress())
            upgrade = is_upgrade(self.method, request.clientproto, self.headers)
            self.upgrade = request.channel if upgrade else None
        #: The header the plan's request id goes upstream in.
        self.request_id_header = request_id_header
        #: The router's plan for this request, and what its route takes (set by :class:`ProxyResource`).
        self.plan: RequestPlan
        self.route_work: RouteWork
        self._directives: Optional[cachepolicy.Directives] = None
        self._connection: Optional[FrozenSet[bytes]] = None
        self._shaped: Optional[bool] = None

    @property
    def shaped(self) -> bool:
        """Whether the request has a field that shapes the cache's answer
        (:data:`~powerlb.cachepolicy.SHAPING_FIELDS`: ``Cache-Control``, ``Pragma``, preconditions,
        ``Range``); looked for once, when first asked. Without one, its directives are none."""
        shaped = self._shaped
        if shaped is None:
            shaped = False
            for name, _ in self.headers:
                if name in cachepolicy.SHAPING_FIELDS:
                    shaped = True
                    break
            self._shaped = shaped
        return shaped

    @property
    def connection(self) -> FrozenSet[bytes]:
        """The request's ``Connection`` options (:func:`~powerlb.headers.connection_tokens`), parsed
        once, when first asked (by :meth:`upstream`), and read by every later use."""
        connection = self._connection
        if connection is None:
            connection = self._connection = connection_tokens(self.headers)
        return connection

    @property
    def directives(self) -> cachepolicy.Directives:
        """The request's cache directives (:func:`~powerlb.cachepolicy.request_directives`), parsed
        once, when a layer first asks, and read by every later one."""
        directives = self._directives
        if directives is None:
            shaped = self.shaped
            directives = cachepolicy.request_directives(self.headers) if shaped else cachepolicy.NO_DIRECTIVES
            self._directives = directives
        return directives

    def with_method_and_headers(self, method: bytes, headers: Headers) -> ClientRequest:
        """A copy of this request with another ``method`` and ``headers`` (e.g. the cache's own GET).

        Copied slot by slot: ``copy.copy`` of a slotted object takes over ten times as long.
        """
        other = ClientRequest.__new__(ClientRequest)
        other.method = method
        other.headers = headers
        other.target = self.target
        other.host = self.host
        other.scheme = self.scheme
        other.client_host = self.client_host
        other.upgrade = self.upgrade
        other.plan = self.plan
        other.request_id_header = self.request_id_header
        other.route_work = self.route_work
        other._directives = other._shaped = None  # other headers: looked at again if asked
        # The cache's own headers differ only in conditionals and range, never in Connection.
        other._connection = self._connection
        return other

    def upstream(self, body: Union[bytes, BodyStream]) -> UpstreamRequest:
        """The request to send to a backend as the plan says: forwarding headers added, hop-by-hop ones
        and the sticky cookie dropped, the route's header rules applied, the request id (if any) in
        :attr:`request_id_header`, the target rewritten by the route."""
        plan, work = self.plan, self.route_work
        request_id, id_field = plan.request_id, self.request_id_header
        headers = forward_request_headers(
            self.headers,
            self.client_host,
            self.scheme,
            self.host,
            self.connection,
            None if request_id is None else id_field,
        )
        if self.upgrade is not None:
            headers = upgrade_request_headers(self.headers, headers)
        if plan.sticky is not None:
            headers = plan.sticky.strip(headers)
        if work.request_rules is not None:
            headers = apply_header_rules(work.request_rules, headers)
        if request_id is not None:
            if work.request_rules is not None:  # (they may have set the field: the plan's id wins)
                headers = [(k, v) for k, v in headers if k != id_field]
            headers.append((id_field, request_id))
        target = rewrite_path(work.route, self.target) if work.rewrites else self.target
        return UpstreamRequest(self.method, target, headers, body, self.upgrade)

    def send(self, body: Union[bytes, BodyStream], sink: IResponseSink) -> Dispatch:
        """Send this request with ``body`` to its plan's dispatcher (as :meth:`upstream` makes it);
        ``sink`` hears the response."""
        return self.plan.dispatcher.send(self.upstream(body), sink, self)

    def cache_key(self) -> bytes:
        """The request's cache key on its route (:func:`~powerlb.policies.cache_key`)."""
        host = self.host or b""
        if self.route_work.plain_key:
            return cachepolicy.primary_key(self.scheme, host, self.target)
        return cache_key(self.route_work.route, self.scheme, host, self.target, self.headers)


class RouteWork:
    """What carrying out one route takes, worked out once per route rather than once per request:
    whether its cache key is the plain one, whether it rewrites paths, its header rules (None when
    it has none)."""

    __slots__ = ("plain_key", "request_rules", "response_rules", "rewrites", "route")

    def __init__(self, route: Route) -> None:
        self.route = route
        self.plain_key = route.cache_key_query and not route.cache_key_headers
        self.rewrites = route.strip_prefix is not None or route.add_prefix is not None
        self.request_rules = route.request_headers if route.request_headers else None
        self.response_rules = route.response_headers if route.response_headers else None


class ProxyResource(Resource):
    """Entry point for every client request: the planner's decision, then the cache layer, then the
    plan's dispatcher.

    ``planner`` (:class:`~powerlb.plan.IPlanner`) decides once per request:
    a refusal is answered at once (powerlb's own response, with the refusal's
    headers); a plan names the route (cache use, cache key, path rewrite,
    header rules) and the pool (dispatcher, sticky cookie) that serve it.
    The plan's request id is sent upstream in ``request_id_header``.
    """

    isLeaf = True

    def __init__(
        self,
        planner: IPlanner,
        cache: Optional[CacheLayer],
        counters: Counters,
        request_id_header: bytes = b"x-request-id",
    ) -> None:
        super().__init__()
        self.planner = planner
        self.cache = cache
        self.counters = counters
        self.request_id_header = request_id_header.lower()
        #: The work of the last route planned (one route, or a run of one route's requests, reuses it).
        self._work = RouteWork(Route())

    def route_work(self, route: Route) -> RouteWork:
        """What carrying out ``route`` takes (remembered for the last route asked)."""
        work = self._work
        if work.route is not route:
            work = self._work = RouteWork(route)
        return work

    def render(self, request: ProxyRequest) -> Any:
        self.counters.requests += 1
        client = ClientRequest(request, self.request_id_header)
        if client.host is None and request.clientproto == b"HTTP/1.1":
            self.counters.errors += 1
            return error_response(request, 400, "HTTP/1.1 request without a Host header")
        decision = getattr(request, "plan", None)  # made already on the channel's short way
        if decision is None:
            peer = client.client_host.decode()
            target = client.target
            decision = self.planner.plan(
                client.method, client.scheme, client.host, target, client.headers, peer
            )
        if not isinstance(decision, RequestPlan):
            self.counters.errors += 1
            reason = decision.reason.decode("latin-1")
            return error_response(request, decision.status, reason, decision.headers)
        client.plan = decision
        client.route_work = self.route_work(decision.route)
        request.request_id = decision.request_id
        responder = ClientResponder(request, self.counters, decision, client.route_work)
        body = getattr(request, "body_stream", None)
        if body is None:
            body = request.content.read() if request.content is not None else b""
        cache = self.cache
        if cache is None or not decision.route.cache or client.upgrade is not None:  # upgrades: never cached
            self.counters.cache_bypass += 1
            responder.cache_result(b"BYPASS")
            responder.start(client.send(body, responder))
        else:
            cache.send(client, body, responder)
        return NOT_DONE_YET

    def fast_response(
        self, method: bytes, target: bytes, headers: Headers, secure: bool, peer: str
    ) -> Tuple[Optional[FastResponse], Optional[Decision]]:
        """The ready response to a plain ``GET``/``HEAD`` when its plan lets a fresh stored response
        answer it, ``(head, body)``, else None (the request takes the normal way); and the
        planner's decision (None when not asked), which that request then carries on.

        The client channel's short way for cache hits (:data:`powerlb.interfaces.FastAnswer`):
        the same planner, cache key and answer as :meth:`render` (whose head differs only in its
        ``Date`` when the stored response has none).
        """
        cache = self.cache
        host = get_first(headers, b"host")
        if cache is None or host is None:
            return None, None
        scheme = b"https" if secure else b"http"
        decision = self.planner.plan(method, scheme, host, target, headers, peer)
        if not isinstance(decision, RequestPlan) or not decision.route.cache:
            return None, decision
        work = self._work
        if work.route is not decision.route:
            work = self.route_work(decision.route)
        if work.plain_key:
            key = cachepolicy.primary_key(scheme, host, target)
        else:
            key = cache_key(work.route, scheme, host, target, headers)
        response = cache.fast_response(key, method, headers, work.response_rules)
        if response is None:
            return None, decision
        self.counters.requests += 1
        return response, decision


@implementer(IClientSink, IPushProducer)
class ClientResponder:
    """Writes one upstream response to its twisted.web request as it streams in.

    A client that goes away abandons the upstream request. Once a response
    streams (its head came alone), it is the producer registered with the
    client connection, and passes a slow client's pause on to the backend
    read; a response that comes whole is written at once, and needs none.
    With ``sticky`` a response a backend answered gets the sticky cookie of
    that backend, unless the client already sent it. Every response head gets
    the route's response header rules (``plan``'s). Without either, powerlb's
    own request forwards the backend's headers as it writes them
    (``forward_in_head``).
    """

    __slots__ = (
        "counters",
        "dispatch",
        "done",
        "forward_in_head",
        "plan",
        "request",
        "response_rules",
        "streaming",
        "x_cache",
    )

    def __init__(self, request: ProxyRequest, counters: Counters, plan: RequestPlan, work: RouteWork) -> None:
        self.request = request
        self.counters = counters
        self.x_cache = b""
        self.plan = plan
        self.response_rules = work.response_rules
        self.dispatch: Any = None
        self.done = False
        #: Registered as the request's producer (a response streams).
        self.streaming = False
        #: Whether the request forwards a response's headers as it writes its head (powerlb's own
        #: request, ProxyRequest.send_head), when nothing else changes them (no sticky cookie, no rules).
        own_head = getattr(request, "send_head", None) is not None
        self.forward_in_head = own_head and plan.sticky is None and self.response_rules is None
        when_gone = getattr(request, "when_gone", None)  # powerlb's own request: no Deferred needed
        if when_gone is not None:
            when_gone(self._client_gone)
        else:
            request.notifyFinish().addErrback(self._client_gone)

    def start(self, dispatch: Dispatch) -> None:
        """Follow ``dispatch`` (it may already have ended, e.g. with a 503); noted on the request for
        :mod:`powerlb.outcomes`."""
        self.request.dispatch = dispatch
        if not self.done:
            self.dispatch = dispatch

    def when_done(self) -> Deferred[None]:
        return self.request.notifyFinish()

    def own_answer(self, status: int, reason: str) -> None:
        """powerlb's own short answer (:func:`~powerlb.responses.error_response`) instead of a response."""
        if not self._end():
            return
        request = self.request
        request.x_cache = self.x_cache
        request.write(error_response(request, status, reason))
        request.finish()

    # -- IClientSink -------------------------------------------------------

    def cache_result(self, x_cache: bytes) -> None:
        """The cache's result: the response goes out with ``X-Cache: x_cache``."""
        self.x_cache = x_cache

    def interim_received(self, status: int, reason: bytes, headers: Headers) -> None:
        """Relay a 1xx ahead of the response, to HTTP/1.1 clients only (RFC 9110 section 15.2).

        Written to the connection directly: twisted.web's request has no way to
        send one, and it is neither the response nor counted as it. HTTP/1.0
        clients never get one, and HTTP/2 streams drop them.
        """
        request = self.request
        if self.done or request.startedWriting or request.clientproto != b"HTTP/1.1":
            return
        transport = request.channel.transport
        if transport is not None:
            transport.write(serialize_interim(status, reason, strip_hop_by_hop(headers)))

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        if status == 101:
            self._switched(reason)
            return
        request = self.request
        if not (self.done or self.streaming):
            self.streaming = True
            request.registerProducer(self, True)
        if self.forward_in_head:
            request.send_head(status, reason, headers, self.x_cache, True)
            return
        headers = self._client_headers(headers)
        send_head = getattr(request, "send_head", None)  # powerlb's own request writes its head at once
        if send_head is not None:
            send_head(status, reason, headers, self.x_cache, False)
            return
        request.setResponseCode(status, reason or None)
        set_response_headers(request, headers, self.x_cache)

    def body_received(self, data: bytes) -> None:
        self.request.write(data)

    def response_ended(self) -> None:
        if self._end():
            self.request.finish()

    def response_received(self, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        forward = self.forward_in_head
        if not forward:
            headers = self._client_headers(headers)  # (before _end: a sticky cookie reads the dispatch)
        if not self._end():
            return
        request = self.request
        send_response = getattr(request, "send_response", None)  # powerlb's own request: one write
        if send_response is not None:
            send_response(status, reason, headers, self.x_cache, body, forward)
            return
        request.setResponseCode(status, reason or None)
        set_response_headers(request, headers, self.x_cache)
        if body:
            request.write(body)
        request.finish()

    def request_failed(self, error: UpstreamError) -> None:
        if not self._end():
            return
        request = self.request
        request.x_cache = self.x_cache
        if request.startedWriting:
            # The status line is out: the only honest signal left is a cut connection.
            # twisted.web logs only finished requests, so this one is logged here.
            request.channel.factory.log(request)
            request.abort()
            return
        self.counters.errors += 1
        self.counters.upstream_errors += error.status != 503
        request.write(error_response(request, error.status, error.reason))
        request.finish()

    # -- IPushProducer (the client connection's flow control) --------------

    def pauseProducing(self) -> None:
        if self.dispatch is not None:
            self.dispatch.pauseProducing()

    def resumeProducing(self) -> None:
        if self.dispatch is not None:
            self.dispatch.resumeProducing()

    def stopProducing(self) -> None:
        self._client_gone(None)

    # -- internals -------------------------------------------------------

    def _switched(self, reason: bytes) -> None:
        """The backend switched protocols (an upgrade request's): the tunnel (:mod:`powerlb.tunnel`) writes
        the 101 and takes the connection over, so twisted.web's request writes nothing more. It is logged
        now; the dispatch stays open (the backend's in-flight count) until the client connection closes."""
        self.done = True
        request = self.request
        request.setResponseCode(101, reason or None)
        request.x_cache = self.x_cache
        request.channel.factory.log(request)

    def _client_headers(self, headers: Headers) -> Headers:
        """A response's headers as the client gets them: hop-by-hop ones dropped, the sticky cookie
        added, the route's response header rules applied."""
        headers = forward_response_headers(headers)
        sticky = self.plan.sticky
        if sticky is not None:
            self._stick(sticky, headers)
        if self.response_rules is not None:
            headers = apply_header_rules(self.response_rules, headers)
        return headers

    def _stick(self, sticky: StickyCookie, headers: Headers) -> None:
        """Add the sticky cookie of the backend whose response this is (none for one made from the cache
        after the backend failed)."""
        dispatch = self.dispatch
        if dispatch is not None and dispatch.committed:
            cookie = sticky.set_cookie(dispatch.client.headers, dispatch.backend.url, self.request.isSecure())
            if cookie is not None:
                headers.append((b"set-cookie", cookie))

    def _end(self) -> bool:
        """Mark the response over; False when it already was (the client left)."""
        if self.done:
            return False
        self.done = True
        self.dispatch = None
        if self.streaming:
            self.streaming = False
            self.request.unregisterProducer()
        return True

    def _client_gone(self, failure: Optional[Failure]) -> None:
        dispatch = self.dispatch
        self.done = True
        self.dispatch = None
        if dispatch is not None:
            dispatch.stopProducing()


def _origin_form(uri: bytes, host: Optional[bytes]) -> tuple[bytes, Optional[bytes]]:
    """The origin-form target and the effective host of a request URI (RFC 9112 section 3.2)."""
    if uri.startswith((b"http://", b"https://")):
        rest = uri.split(b"://", 1)[1]
        slash = rest.find(b"/")
        authority, path = (rest, b"/") if slash < 0 else (rest[:slash], rest[slash:])
        return path, authority
    return uri, host
