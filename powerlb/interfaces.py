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

from twisted.internet.interfaces import IPushProducer
from zope.interface import Interface

from powerlb.balancing import IBalancer
from powerlb.cache import ICacheStore
from powerlb.errors import UpstreamError
from powerlb.headers import Headers

if TYPE_CHECKING:
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

    def request_failed(error: UpstreamError) -> None:
        """The exchange failed; ``error.status`` says 502 or 504."""


class IClientSink(IResponseSink):
    """The sink of a client's response: also told when the cache answers in the fetched response's
    place (the ``X-Cache`` result decided where the cache decides it, before the head it changes)."""

    def cache_answered(x_cache: bytes) -> None:
        """The response that follows is the cache's (``STALE``, ``REVALIDATED``), not the backend's."""


class IUpstream(Interface):
    """One backend's connection pool: sends a request, and its response goes to a sink."""

    def request(
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Union[bytes, BodyStream],
        sink: IResponseSink,
        idempotent: bool,
    ) -> IPushProducer:
        """Send the request; ``sink`` hears its response (no event before this returns). The returned
        exchange is the push producer of the response body (a slow client pauses it) and has
        ``abort()`` and ``response_time``."""


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
    "IResponseSink",
    "IUpstream",
]
