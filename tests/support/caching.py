"""powerlb's request path with the cache layer on fake backends (powerlb.testing) and a task.Clock.

:class:`Proxy` builds it as the service does; each :class:`Client` is a real HTTP/1.1
connection of its site on a ``StringTransport``, its response parsed back into a
:class:`~powerlb.testing.RecordingSink`.
"""

from __future__ import annotations

from typing import Any, Callable, List, Sequence

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from powerlb.cache import LRUCache
from powerlb.caching import CacheLayer
from powerlb.config import config_from_mapping
from powerlb.dispatch import Dispatcher
from powerlb.headers import Headers
from powerlb.http11 import IResponseEvents, ResponseParser, serialize_request_head
from powerlb.outcomes import Outcomes
from powerlb.plan import IPlanner, SinglePool
from powerlb.proxy import ProxyResource
from powerlb.server import ProxySite
from powerlb.stats import Counters
from powerlb.testing import FakePool, FakeUpstream, RecordingSink

CACHEABLE = [(b"cache-control", b"max-age=60")]


@implementer(IResponseEvents)
class Client:
    """One client connection to ``site`` from ``peer``; :attr:`response` is what came back so far."""

    def __init__(self, site: ProxySite, peer: str) -> None:
        address = IPv4Address("TCP", peer, 50000)
        self.transport = StringTransport(peerAddress=address)
        self.channel = site.buildProtocol(address)
        self.channel.makeConnection(self.transport)
        self._sink = RecordingSink()
        self._parser = ResponseParser(self)

    def send(self, method: bytes, target: bytes, headers: Headers) -> None:
        self._parser.expect(method == b"HEAD")
        self.channel.dataReceived(serialize_request_head(method, target, headers, None))

    @property
    def response(self) -> RecordingSink:
        data = self.transport.value()
        self.transport.clear()
        self._parser.feed(data)
        return self._sink

    @property
    def x_cache(self) -> Any:
        return self.response.header(b"x-cache")

    def response_head(self, status: int, reason: bytes, headers: Headers) -> None:
        self._sink.head_received(status, reason, headers)

    def response_body(self, data: bytes) -> None:
        self._sink.body_received(data)

    def response_end(self, keep_alive: bool) -> None:
        self._sink.response_ended()

    def response_whole(
        self, status: int, reason: bytes, headers: Headers, body: bytes, keep_alive: bool
    ) -> None:
        self._sink.response_received(status, reason, headers, body)


class Proxy:
    """powerlb's request path with the cache on, over one fake backend (``upstream``) on ``clock``."""

    def __init__(
        self,
        *,
        grace: float = 0.0,
        max_object: int = 1 << 20,
        planner: Callable[[Dispatcher], IPlanner] = SinglePool,
        **settings: Any,
    ) -> None:
        """``planner`` makes the request path's planner from the fake pool's dispatcher."""
        self.pool = FakePool(1)
        self.clock = self.pool.clock
        self.upstream: FakeUpstream = self.pool.upstreams[0]
        self.counters = Counters()
        store = LRUCache(clock=self.clock, keep_stale=grace)
        self.cache = CacheLayer(store, self.clock, self.counters, max_object, grace=grace, **settings)
        dispatcher = self.pool.dispatcher(counters=self.counters)
        config = config_from_mapping({"backends": [backend.url for backend in self.pool.backends]})
        self.outcomes = Outcomes(self.clock)
        self.resource = resource = ProxyResource(planner(dispatcher), self.cache, self.counters)
        self.site = ProxySite(resource, self.clock, config, self.outcomes)
        self.site.fast_answer = resource.fast_response

    def request(
        self,
        target: bytes = b"/x",
        method: bytes = b"GET",
        headers: Headers = (),
        peer: str = "127.0.0.1",
    ) -> Client:
        """Send a request on a new connection and let what is due now happen."""
        client = Client(self.site, peer)
        client.send(method, target, [(b"host", b"example"), *headers])
        self.clock.advance(0)
        return client

    @property
    def sent(self) -> List[bytes]:
        """The targets of the requests the backend received."""
        return [exchange.target for exchange in self.upstream.requests]


def results(clients: Sequence[Client]) -> List[Any]:
    return [(c.response.status, c.response.body, c.x_cache) for c in clients]
