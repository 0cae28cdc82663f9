"""The contracts between the layers of the request path, in one module.

The request path is a one-way stack: the client-facing resource asks the
planner (:class:`powerlb.plan.IPlanner`), then the cache layer, then the
plan's dispatcher, which hands the request to a backend's connection pool.
Answers come back up as the events of a response sink. This module holds
those contracts, so that no layer needs to import the one above it:

- the response sink (:class:`~powerlb.upstream.IResponseSink`, re-exported here);
- the upstream (:class:`IUpstream`): a backend's connection pool, as the dispatcher uses it;
- the cache store (:class:`~powerlb.cache.ICacheStore`, re-exported here);
- the balancer (:class:`~powerlb.balancing.Balancer`'s protocol, :class:`IBalancer`);
- the fast hit (:data:`FastResponse`, :data:`FastAnswer`): the client channel's short way for cache hits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional, Tuple

from powerlb.cache import ICacheStore
from powerlb.headers import Headers
from powerlb.upstream import IResponseSink

if TYPE_CHECKING:
    from powerlb.plan import Decision

#: A fast hit: the response's head and body, and the plan's request id (None when none).
FastResponse = Tuple[bytes, bytes, Optional[bytes]]
#: ``(method, target, headers, secure, peer) -> (FastResponse or None, the planner's decision or None)``:
#: answers plain cache hits, and hands a request it does not answer the decision made for it.
FastAnswer = Callable[[bytes, bytes, Headers, bool, str], Tuple[Optional[FastResponse], Optional["Decision"]]]

__all__ = ["FastAnswer", "FastResponse", "ICacheStore", "IResponseSink"]
