"""What became of each client request: counted for the metrics, and access-logged when that is on.

The client-facing site calls :meth:`Outcomes.completed` once per finished
twisted.web request, and the channel :meth:`Outcomes.fast_hit` once per
cache hit it answered on its short way (no twisted.web request). Each adds
one to a count on the reactor thread: a dict update keyed by (backend,
status class, cache result) for a request, a list item by status class for
a fast hit (the hottest path: no key to build and hash). With an access log,
each also emits one event (see :mod:`powerlb.accesslog`). Without one,
nothing more is done.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from powerlb.accesslog import EVENT_FORMAT
from powerlb.backend import Backend
from powerlb.headers import Headers, get_first
from powerlb.interfaces import FastResponse

#: The ``X-Cache`` result of the cache hits answered on the channel's short way.
_HIT = b"HIT"

OutcomeKey = Tuple[Optional[Backend], int, bytes]


def _text(value: Optional[bytes]) -> Optional[str]:
    return None if value is None else value.decode("latin-1")


class Outcomes:
    """Counts of completed client requests, and the access log they go to (None: off).

    ``counts`` maps ``(backend, status // 100, x_cache)`` to a count:
    ``backend`` is the backend the request was sent to last (None when it
    was sent to none: a cache answer, or a 503 with no healthy backend) and
    ``x_cache`` the cache result (``b""`` when there is none, e.g. a 400).
    ``fast_hits`` counts the fast hits apart, by status class (its index, 2
    for a 2xx); :meth:`snapshot` adds them up with the others. The access
    log's time comes from ``clock``.
    """

    __slots__ = ("access", "clock", "counts", "fast_hits")

    def __init__(self, clock: IReactorTime, access: Optional[Logger] = None) -> None:
        self.clock = clock
        self.access = access
        self.counts: Dict[OutcomeKey, int] = {}
        self.fast_hits: List[int] = [0] * 10

    def completed(self, request: Any) -> None:
        """Count (and log) a finished :class:`~powerlb.server.ProxyRequest`."""
        dispatch = request.dispatch
        backend = None if dispatch is None else dispatch.backend
        key = (backend, request.code // 100, request.x_cache)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1
        if self.access is None:
            return
        upstream_time = None if dispatch is None or dispatch.upstream_time < 0 else dispatch.upstream_time
        headers = getattr(request, "parsed_headers", None)  # a plain request's (its requestHeaders are empty)
        if headers is None:
            referer, user_agent = request.getHeader(b"referer"), request.getHeader(b"user-agent")
        else:
            referer, user_agent = get_first(headers, b"referer"), get_first(headers, b"user-agent")
        self._emit(
            getattr(request.getClientAddress(), "host", None),
            request.method,
            request.uri,
            request.clientproto,
            request.code,
            request.sentLength,
            referer,
            user_agent,
            None if backend is None else backend.id,
            upstream_time,
            request.x_cache,
            getattr(request, "request_id", None),
        )

    def fast_hit(
        self,
        peer: Any,
        method: bytes,
        target: bytes,
        headers: Headers,
        response: FastResponse,
        request_id: Optional[bytes] = None,
    ) -> None:
        """Count (and log) a cache hit the channel answered for the client at address ``peer`` with
        ``response``, its (head, body); ``request_id`` is the plan's."""
        head = response[0]
        self.fast_hits[head[9] - 48] += 1  # head starts "HTTP/1.1 NNN": the status class digit
        if self.access is None:
            return
        self._emit(
            getattr(peer, "host", None),
            method,
            target,
            b"HTTP/1.1",
            int(head[9:12]),
            len(response[1]),
            get_first(headers, b"referer"),
            get_first(headers, b"user-agent"),
            None,
            None,
            _HIT,
            request_id,
        )

    def snapshot(self) -> Dict[str, Dict[str, Dict[str, int]]]:
        """The counts as JSON data: backend URL ("" for none) -> ``"2xx"`` -> cache result -> count.

        Cache results are lower case (``hit``, ``miss``, ...), ``none`` when there is none.
        """
        out: Dict[str, Dict[str, Dict[str, int]]] = {}
        fast_hits = [
            ((None, status_class, _HIT), count) for status_class, count in enumerate(self.fast_hits) if count
        ]
        for (backend, status_class, x_cache), count in [*self.counts.items(), *fast_hits]:
            by_code = out.setdefault("" if backend is None else backend.url, {})
            by_cache = by_code.setdefault(f"{status_class}xx", {})
            result = x_cache.decode("ascii").lower() or "none"
            by_cache[result] = by_cache.get(result, 0) + count
        return out

    def _emit(
        self,
        client: Optional[str],
        method: bytes,
        target: bytes,
        protocol: bytes,
        status: int,
        sent: int,
        referer: Optional[bytes],
        user_agent: Optional[bytes],
        upstream: Optional[str],
        upstream_time: Optional[float],
        x_cache: bytes,
        request_id: Optional[bytes],
    ) -> None:
        access = self.access
        if access is None:
            return
        access.info(
            EVENT_FORMAT,
            client=client,
            user=None,
            time=self.clock.seconds(),
            method=method.decode("latin-1"),
            target=target.decode("latin-1"),
            protocol=protocol.decode("latin-1"),
            status=status,
            bytes=sent,
            referer=_text(referer),
            user_agent=_text(user_agent),
            upstream=upstream,
            upstream_time=upstream_time,
            cache=x_cache.decode("ascii") or None,
            request_id=_text(request_id),
        )
