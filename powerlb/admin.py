"""The admin listener: ``/_powerlb/stats`` (JSON), ``/metrics`` (Prometheus text),
and the state-changing ``POST`` endpoints, which need the bearer token: ``/_powerlb/purge``
(remove cached responses), ``/_powerlb/backends/drain`` and ``/_powerlb/backends/weight``."""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable, Dict, List, Optional, Sequence

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request

from powerlb.backend import Backend
from powerlb.cachepolicy import url_key
from powerlb.caching import CacheLayer
from powerlb.config import parse_backend, parse_weight
from powerlb.stats import prometheus_families

log = Logger()


class _Families:
    """A prometheus_client collector over one instance's snapshot (no global registry)."""

    def __init__(self, stats: Callable[[], Dict[str, Any]]) -> None:
        self._stats = stats

    def collect(self) -> Any:
        return prometheus_families(self._stats())


class StatsResource(Resource):
    """``GET /_powerlb/stats``: backends, counters and cache figures as JSON."""

    isLeaf = True

    def __init__(self, stats: Callable[[], Dict[str, Any]]) -> None:
        super().__init__()
        self._stats = stats

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(self._stats(), indent=2).encode() + b"\n"


class MetricsResource(Resource):
    """``GET /metrics``: the same figures in the Prometheus text format.

    Each resource has its own registry (two instances in one process never
    mix), and renders on the reactor thread, where the figures live.
    """

    isLeaf = True

    def __init__(self, stats: Callable[[], Dict[str, Any]]) -> None:
        super().__init__()
        from prometheus_client import CollectorRegistry

        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_Families(stats))

    def render_GET(self, request: Request) -> bytes:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(self._registry)


class _AdminAction(Resource):
    """Base of the state-changing endpoints: ``POST`` only, with ``Authorization: Bearer <admin-token>``.

    This is the one token check of the admin listener: without a configured
    token the endpoint is off (403); a missing or wrong token gets 401 and
    ``WWW-Authenticate: Bearer``. The token is compared in constant time.
    Other methods get a JSON 405 with ``Allow: POST``. Subclasses implement :meth:`act`.
    """

    isLeaf = True

    def __init__(self, token: Optional[str]) -> None:
        super().__init__()
        self._token = None if token is None else token.encode()

    def render(self, request: Request) -> bytes:
        if request.method != b"POST":
            request.setHeader(b"allow", b"POST")
            return _json(request, 405, {"error": "use POST"})
        if self._token is None:
            return _json(request, 403, {"error": "set admin-token to enable this endpoint"})
        given = request.getHeader(b"authorization") or b""
        scheme, _, credentials = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), self._token):
            request.setHeader(b"www-authenticate", b'Bearer realm="powerlb"')
            return _json(request, 401, {"error": "a valid Authorization: Bearer <admin-token> is required"})
        return self.act(request)

    def act(self, request: Request) -> bytes:
        """Handle an authorised request and return the response body."""
        raise NotImplementedError


class PurgeResource(_AdminAction):
    """``POST /_powerlb/purge?url=URL`` or ``?prefix=URL``: remove cached responses.

    ``url`` removes every stored variant of one absolute URL (as clients
    request it: ``http://host[:port]/path?query``); ``prefix`` removes every
    URL that starts with it. Answers ``{"purged": N}``. Needs the admin token
    (see :class:`_AdminAction`).
    """

    def __init__(self, cache: Optional[CacheLayer], token: Optional[str]) -> None:
        super().__init__(token)
        self._cache = cache

    def act(self, request: Request) -> bytes:
        if self._cache is None:
            return _json(request, 404, {"error": "the cache is off (cache-size 0)"})
        args = request.args
        if len([name for name in (b"url", b"prefix") if name in args]) != 1:
            return _json(request, 400, {"error": "give exactly one of ?url=URL or ?prefix=URL"})
        prefix = b"prefix" in args
        key = url_key(args[b"prefix" if prefix else b"url"][0])
        if key is None:
            return _json(request, 400, {"error": "the URL must be absolute: http://host/path"})
        return _json(request, 200, {"purged": self._cache.purge(key, prefix=prefix)})


class _BackendChange(_AdminAction):
    """``POST /_powerlb/backends/<change>?backend=URL&...``: change one backend at run time.

    ``backend`` is written as in the configuration (``http://host:port``) and
    matched against the live backends. Every parameter is checked before
    anything changes: a missing, repeated, unknown or bad one gets 400, an
    unknown backend 404. Answers the backend's state:
    ``{"backend": URL, "draining": bool, "weight": N}``. Subclasses say which
    other parameters they take (:attr:`parameters`), :meth:`parse` them and
    :meth:`apply` the change.
    """

    #: The parameters besides ``backend``: name -> whether it is required.
    parameters: Dict[str, bool] = {}

    def __init__(self, backends: Sequence[Backend], token: Optional[str]) -> None:
        """``backends`` is the live list (the service updates it in place on reload)."""
        super().__init__(token)
        self._backends = backends

    def act(self, request: Request) -> bytes:
        try:
            query = _query(request.args, {"backend": True, **self.parameters})
            url = _backend_url(query["backend"])
            value = self.parse(query)
        except ValueError as exc:
            return _json(request, 400, {"error": str(exc)})
        backend = next((backend for backend in self._backends if backend.url == url), None)
        if backend is None:
            known = ", ".join(backend.url for backend in self._backends) or "none"
            return _json(
                request, 404, {"error": f"unknown backend {query['backend']!r}; the backends are: {known}"}
            )
        self.apply(backend, value)
        return _json(
            request, 200, {"backend": backend.url, "draining": backend.draining, "weight": backend.weight}
        )

    def parse(self, query: Dict[str, str]) -> Any:
        """The change asked for, from the query; raises ValueError with the reason when it is bad."""
        raise NotImplementedError

    def apply(self, backend: Backend, value: Any) -> None:
        """Make the change parsed by :meth:`parse` to ``backend``."""
        raise NotImplementedError


class DrainResource(_BackendChange):
    """``POST /_powerlb/backends/drain?backend=URL[&drain=false]``: stop (or resume) new requests.

    A draining backend gets no new requests (see ``balancing._eligible``);
    those in flight finish and health checks go on. ``drain=false`` undoes it.
    """

    parameters = {"drain": False}

    def parse(self, query: Dict[str, str]) -> bool:
        value = query.get("drain", "true").lower()
        if value not in ("true", "false"):
            raise ValueError(f"drain must be true or false, not {value!r}")
        return value == "true"

    def apply(self, backend: Backend, value: bool) -> None:
        backend.draining = value
        log.info("admin: backend {url} {state}", url=backend.url, state="draining" if value else "undrained")


class WeightResource(_BackendChange):
    """``POST /_powerlb/backends/weight?backend=URL&weight=N``: change a backend's weight (N >= 1).

    Balancers read the weight on every pick; a slow start in progress ramps
    towards the new weight (see ``Backend.set_weight``). The change lasts until
    a reload that re-weights this backend in the configuration, or a restart.
    """

    parameters = {"weight": True}

    def parse(self, query: Dict[str, str]) -> int:
        return parse_weight(query["weight"], f"weight={query['weight']}")

    def apply(self, backend: Backend, value: int) -> None:
        backend.set_weight(value)
        log.info("admin: backend {url} now has weight {weight}", url=backend.url, weight=value)


def _query(args: Dict[bytes, List[bytes]], allowed: Dict[str, bool]) -> Dict[str, str]:
    """The query parameters, each given at most once, ``allowed`` maps name -> required; else ValueError."""
    query: Dict[str, str] = {}
    for raw, values in args.items():
        name = raw.decode("utf-8", "replace")
        if name not in allowed:
            raise ValueError(f"unknown parameter {name!r}; this endpoint takes: {', '.join(allowed)}")
        if len(values) != 1:
            raise ValueError(f"give {name} once")
        query[name] = values[0].decode("utf-8")  # UnicodeDecodeError is a ValueError
    missing = [name for name, required in allowed.items() if required and name not in query]
    if missing:
        raise ValueError(f"missing parameter {missing[0]}")
    return query


def _backend_url(text: str) -> str:
    """The canonical URL of a backend named in a query (``http://host`` means port 80, as in the config)."""
    if "," in text:
        raise ValueError(f"backend {text!r}: give its URL only, http://host:port")
    return parse_backend(text).url


def _json(request: Request, status: int, body: Dict[str, Any]) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode() + b"\n"


def admin_root(
    stats: Callable[[], Dict[str, Any]],
    cache: Optional[CacheLayer] = None,
    token: Optional[str] = None,
    backends: Sequence[Backend] = (),
) -> Resource:
    """The admin resource tree.

    ``token`` guards every state-changing endpoint (None turns them off),
    ``cache`` serves purge, and ``backends`` (the service's live list) the
    drain and weight endpoints.
    """
    root = Resource()
    root.putChild(b"metrics", MetricsResource(stats))
    namespace = Resource()
    root.putChild(b"_powerlb", namespace)
    namespace.putChild(b"stats", StatsResource(stats))
    namespace.putChild(b"purge", PurgeResource(cache, token))
    backend_changes = Resource()
    namespace.putChild(b"backends", backend_changes)
    backend_changes.putChild(b"drain", DrainResource(backends, token))
    backend_changes.putChild(b"weight", WeightResource(backends, token))
    return root
