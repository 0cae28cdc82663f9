"""The cache layer of the request path: look-ups before a request goes upstream, storing as it comes back.

The decisions are :mod:`powerlb.cachepolicy`'s and the entries live in an
:class:`~powerlb.cache.ICacheStore`; this module applies them to requests and
response events, so the client-facing code only asks "is there an answer?"
and wraps its response sink.
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.internet.interfaces import IReactorTime
from zope.interface import implementer

from powerlb import cachepolicy
from powerlb.cache import CachedResponse, ICacheStore
from powerlb.headers import Headers, get_first
from powerlb.responses import serve_cached
from powerlb.stats import Counters
from powerlb.upstream import IResponseSink, UpstreamError


class CacheLayer:
    """One instance's cache as the request path uses it."""

    def __init__(self, store: ICacheStore, clock: IReactorTime, counters: Counters, max_object: int) -> None:
        self.store = store
        self.clock = clock
        self.counters = counters
        self.max_object = max_object

    def render(self, resource: Any, request: Any, client: Any) -> Any:
        """Answer a client request from the cache, or forward it through ``resource`` and store the answer.

        ``resource`` is the :class:`~powerlb.proxy.ProxyResource`; ``client`` the
        parsed :class:`~powerlb.proxy.ClientRequest`.
        """
        if not cachepolicy.request_is_cacheable(client.method, client.headers):
            self.counters.cache_bypass += 1
            return resource.forward(request, client, b"BYPASS")
        key = cachepolicy.primary_key(client.scheme, client.host or b"", client.target)
        entry = self.store.get(key, client.headers)
        now = self.clock.seconds()
        if entry is not None and entry.is_fresh(now):
            self.counters.cache_hits += 1
            return serve_cached(request, entry, now)
        self.counters.cache_misses += 1
        if client.method != b"GET":
            return resource.forward(request, client, b"MISS")
        request_time = now
        return resource.forward(
            request,
            client,
            b"MISS",
            lambda sink: StoringSink(self, sink, key, client.headers, request_time),
        )


@implementer(IResponseSink)
class StoringSink:
    """Passes a response on to the next sink, keeping a copy to store when the policy allows.

    A body that grows past the object size limit stops being kept (it is
    still passed on whole); a failed or aborted response is never stored.
    """

    def __init__(
        self, layer: CacheLayer, sink: Any, key: bytes, request_headers: Headers, request_time: float
    ) -> None:
        self.layer = layer
        self.sink = sink
        self.key = key
        self.request_headers = request_headers
        self.request_time = request_time
        self.plan: Optional[cachepolicy.StorePlan] = None
        self.parts: Optional[List[bytes]] = None
        self.size = 0
        self.status = 0
        self.reason = b""
        self.headers: Headers = []

    def head_received(self, status: int, reason: bytes, headers: Headers) -> None:
        plan = cachepolicy.plan_store(
            b"GET", self.request_headers, status, headers, self.request_time, self.layer.clock.seconds()
        )
        length = get_first(headers, b"content-length")
        too_big = length is not None and length.isdigit() and int(length) > self.layer.max_object
        if plan is not None and not too_big:
            self.plan, self.parts = plan, []
            self.status, self.reason, self.headers = status, reason, headers
        self.sink.head_received(status, reason, headers)

    def body_received(self, data: bytes) -> None:
        parts = self.parts
        if parts is not None:
            self.size += len(data)
            if self.size > self.layer.max_object:
                self.parts = None
            else:
                parts.append(data)
        self.sink.body_received(data)

    def response_ended(self) -> None:
        self.sink.response_ended()
        if self.parts is not None:
            entry = CachedResponse.from_plan(
                self.plan, self.status, self.reason, self.headers, b"".join(self.parts), self.request_headers
            )
            if self.layer.store.put(self.key, entry):
                self.layer.counters.cache_stores += 1

    def request_failed(self, error: UpstreamError) -> None:
        self.parts = None
        self.sink.request_failed(error)
