"""The contracts between the layers of the request path, in one module.

The request path is a one-way stack: the client-facing resource
(:mod:`powerlb.proxy`) asks the planner (:class:`powerlb.plan.IPlanner`),
then the cache layer (:mod:`powerlb.caching`), then the plan's dispatcher
(:mod:`powerlb.dispatch`), which hands the request to a backend's pool
(:class:`IUpstream`, :class:`powerlb.upstream.ProxyClientFactory`). Answers
come back up as the events of a response sink (:class:`IResponseSink`). The
contracts live here, so that no layer imports the one above it:

- :class:`IResponseSink`: the events of one upstream response; :class:`IClientSink`, those of
  the client's, which the cache may answer in the backend's place;
- :class:`IUpstream`: one backend's connection pool, as the dispatcher sends to it;
- :class:`~powerlb.cache.ICacheStore`: where the cache keeps entries (defined beside its stores);
- :class:`~powerlb.balancing.IBalancer`: the balancing algorithm (defined beside the algorithms);
- :data:`FastAnswer`: the client channel's short way for cache hits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Tuple, Union

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, ITCPTransport
from zope.interface import Attribute, Interface

from powerlb.balancing import IBalancer
from powerlb.cache import ICacheStore
from powerlb.errors import UpstreamError
from powerlb.headers import Headers

if TYPE_CHECKING:
    from powerlb.dispatch import Dispatch
    from powerlb.plan import Decision
    from powerlb.upstream import BodyStream


class IResponseSink(Interface):
    """Receives one upstream response; exactly one of ``response_ended`` or ``request_failed`` ends it.

    No event reaches the sink before :meth:`ProxyClientFactory.request` has
    returned the exchange. Every sink passes interim responses on or drops them.
    """

    def interim_received(status: int, reason: bytes, headers: Headers) -> None:
        """An interim (1xx) response arrived ahead of the final one (headers as sent); never the response."""

    def head_received(status: int, reason: bytes, headers: Headers) -> None:
        """The status line and headers arrived (hop-by-hop headers still included)."""

    def body_received(data: bytes) -> None:
        """A piece of the decoded body arrived."""

    def response_ended() -> None:
        """The whole response arrived."""

    def response_received(status: int, reason: bytes, headers: Headers, body: bytes) -> None:
        """A whole response at once, instead of its head, body and end: what :meth:`head_received`,
        :meth:`body_received` (when ``body``) and :meth:`response_ended` would say. A small response
        all in hand comes so, as does every answer made from a stored response."""

    def request_failed(error: UpstreamError) -> None:
        """The exchange failed; ``error.status`` says 502 or 504."""


def whole_as_parts(sink: IResponseSink, status: int, reason: bytes, headers: Headers, body: bytes) -> None:
    """Give ``sink`` a whole response as its parts (head, body when there is one, end): the
    :meth:`IResponseSink.response_received` of a sink that takes a response no other way."""
    sink.head_received(status, reason, headers)
    if body:
        sink.body_received(body)
    sink.response_ended()


class IClientSink(IResponseSink):
    """The sink of a client's response, which the layers below the resource answer through: a stored
    response comes as the same events as a fetched one. Also told the cache's result (``X-Cache``,
    decided where the cache decides it), the way to the backend once the request is sent, and
    powerlb's own answers."""

    def cache_result(x_cache: bytes) -> None:
        """What the cache did (``HIT``, ``MISS``, ``STALE``...), before the head it goes out with;
        a later call (a stale or revalidated answer in the fetched one's place) replaces it."""

    def start(dispatch: Dispatch) -> None:
        """The request went to the dispatcher: ``dispatch`` is its way to a backend (flow control,
        the sticky cookie of the backend that answers, the access log's upstream)."""

    def own_answer(status: int, reason: str) -> None:
        """Answer with powerlb's own short response instead (e.g. the outcome of a ``PURGE``)."""

    def when_done() -> Deferred[None]:
        """Fires when the client's response is over, or fails when the client went away first."""


class IExchange(IPushProducer):
    """One request sent upstream, as its sender keeps it: the push producer of the response body
    (a slow client pauses it), which can be abandoned."""

    response_time = Attribute("Seconds from the request sent to the response head (0 until the head came).")

    def abort() -> None:
        """Give up on the exchange (the client went away); the sink hears nothing more."""


class IUpstream(Interface):
    """One backend's connection pool: sends a request, and its response goes to a sink."""

    def request(
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Union[bytes, BodyStream],
        sink: IResponseSink,
        idempotent: bool,
    ) -> IExchange:
        """Send the request; ``sink`` hears its response (no event before this returns)."""


class IConnectionTransport(ITCPTransport, IConsumer, IPushProducer):
    """A stream connection's transport as powerlb's protocols use it (TCP, or TLS over it): it also
    consumes a producer's writes and produces the reads. Twisted's transports provide all three;
    its interfaces declare them apart, so this one is for type checking only."""


#: A fast hit: the response's head and body, written as they are.
FastResponse = Tuple[bytes, bytes]
#: ``(method, target, headers, secure, peer) -> (FastResponse or None, the planner's decision or None)``:
#: answers plain cache hits, and hands a request it does not answer the decision made for it.
FastAnswer = Callable[[bytes, bytes, Headers, bool, str], Tuple[Optional[FastResponse], Optional["Decision"]]]

__all__ = [
    "FastAnswer",
    "FastResponse",
    "IBalancer",
    "ICacheStore",
    "IClientSink",
    "IConnectionTransport",
    "IExchange",
    "IResponseSink",
    "IUpstream",
    "whole_as_parts",
]
