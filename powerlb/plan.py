"""What the router decides for one request, and the contract between routing and the request path.

The router (:class:`IPlanner`) looks at a parsed client request once and
answers either a :class:`~powerlb.policies.Refusal` (404 for no route, 403,
a redirect, 429) or a :class:`RequestPlan`: the matched route (its cache
setting, cache key, path rewrite and header rules) and the pool that serves
it (its dispatcher and sticky cookie). The request path only carries the plan
out; it never matches routes itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Union

from zope.interface import Interface, implementer

from powerlb.headers import Headers
from powerlb.policies import Refusal
from powerlb.routing import Route

if TYPE_CHECKING:
    from powerlb.dispatch import Dispatcher
    from powerlb.sticky import StickyCookie


class RequestPlan:
    """One request's route and the pool that serves it; ``request_id`` is set when the route's
    request-id header was present or generated (forwarded upstream and written to the access log)."""

    __slots__ = ("dispatcher", "pool", "request_id", "route", "sticky")

    def __init__(
        self,
        route: Route,
        pool: str,
        dispatcher: Dispatcher,
        sticky: Optional[StickyCookie] = None,
        request_id: Optional[bytes] = None,
    ) -> None:
        self.route = route
        self.pool = pool
        self.dispatcher = dispatcher
        self.sticky = sticky
        self.request_id = request_id


Decision = Union[RequestPlan, Refusal]


class IPlanner(Interface):
    """Decides, once per request, which route and pool serve it, or how it is refused."""

    def plan(
        method: bytes, scheme: bytes, host: Optional[bytes], target: bytes, headers: Headers, peer: str
    ) -> Decision:
        """The plan for a request (``headers``: powerlb's lower-case ``(name, value)`` list;
        ``peer``: the client address as the connection gives it), or its refusal."""


@implementer(IPlanner)
class SinglePool:
    """The planner of a configuration with one pool and no routes: every request gets the same plan,
    a catch-all :class:`~powerlb.routing.Route` to ``pool`` served by ``dispatcher`` (no request id)."""

    __slots__ = ("decision",)

    def __init__(
        self, dispatcher: Dispatcher, sticky: Optional[StickyCookie] = None, pool: str = "default"
    ) -> None:
        self.decision = RequestPlan(Route(pool=pool), pool, dispatcher, sticky)

    def plan(
        self, method: bytes, scheme: bytes, host: Optional[bytes], target: bytes, headers: Headers, peer: str
    ) -> Decision:
        """The one plan, whatever the request."""
        return self.decision
