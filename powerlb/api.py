"""The runtime API: JSON over HTTP under ``/api/v1/`` on the admin listener.

Reads (``GET``) are open; every change needs ``Authorization: Bearer
<admin-token>``. Every check passes before anything changes; the change is
then made through a :class:`~powerlb.control.Control`: at once on the reactor
thread of a single process (so it is atomic and shows at once in the stats
and metrics), or relayed by the ``--workers`` supervisor to every worker, the
answer coming once each has applied it. Changes last until the next reload or
restart.

The pure part (routing, request bodies, backend ids) is here as functions
that raise :class:`ApiError`; :class:`ApiResource` is the thin Twisted shell.
"""

from __future__ import annotations

import hmac
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from powerlb._version import __version__
from powerlb.backend import BACKEND_STATES, BackendSpec
from powerlb.cachepolicy import url_key
from powerlb.caching import CacheLayer
from powerlb.config import ConfigError, backend_from_entry, config_to_mapping
from powerlb.control import BackendControl, Change, ChangeFailed, Control, LocalControl, PoolDirectory
from powerlb.settings import Config
from powerlb.values import parse_backend, parse_weight

log = Logger()

#: Where the API lives on the admin listener.
API_ROOT = "/api/v1/"

#: The endpoints: a path under :data:`API_ROOT` (``{id}``: a backend id, ``{pool}``: a pool name,
#: one segment each) -> its methods. ``backends`` act on the default pool.
ENDPOINTS: Dict[str, Tuple[str, ...]] = {
    "stats": ("GET",),
    "backends": ("GET", "POST"),
    "backends/{id}": ("GET", "PATCH", "DELETE"),
    "pools": ("GET",),
    "pools/{pool}": ("GET",),
    "pools/{pool}/backends": ("GET", "POST"),
    "pools/{pool}/backends/{id}": ("GET", "PATCH", "DELETE"),
    "cache/purge": ("POST",),
    "config": ("GET",),
    "series": ("GET",),
}

#: The largest request body the API reads.
MAX_BODY = 64 * 1024


class ApiError(Exception):
    """A request the API refuses: the HTTP ``status``, a one-line ``message`` and, for 405, ``allow``."""

    def __init__(self, status: int, message: str, allow: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.allow = tuple(allow)


# --- the pure part ---------------------------------------------------------------------------


def match_endpoint(segments: Sequence[str]) -> Tuple[str, List[str]]:
    """The endpoint (a key of :data:`ENDPOINTS`) and its ``{pool}`` and ``{id}`` arguments, in
    order, for the path segments after ``/api/``; ApiError 404 when there is none. A trailing
    slash is ignored."""
    parts = list(segments)
    if parts and parts[-1] == "":
        parts.pop()
    if parts[:1] == ["v1"]:
        rest = parts[1:]
        for endpoint in ENDPOINTS:
            pattern = endpoint.split("/")
            if len(pattern) == len(rest) and all(p in ("{id}", "{pool}", r) for p, r in zip(pattern, rest)):
                return endpoint, [r for p, r in zip(pattern, rest) if p in ("{id}", "{pool}")]
    known = ", ".join(API_ROOT + endpoint for endpoint in ENDPOINTS)
    raise ApiError(404, f"no such endpoint /api/{'/'.join(parts)}; the endpoints are: {known}")


def allowed_methods(endpoint: str) -> Tuple[str, ...]:
    """The methods an endpoint answers, as an ``Allow`` header lists them (HEAD with GET)."""
    methods = ENDPOINTS[endpoint]
    return (*methods, "HEAD") if "GET" in methods else methods


def parse_json_body(content_type: Optional[bytes], body: bytes) -> Dict[str, Any]:
    """A request body that must be a JSON object: 415 unless the Content-Type is JSON, 413 when it
    is longer than :data:`MAX_BODY`, 400 when it is not a JSON object."""
    media = (content_type or b"").split(b";", 1)[0].strip().lower()
    if media != b"application/json" and not media.endswith(b"+json"):
        raise ApiError(415, "send the body as JSON with Content-Type: application/json")
    if len(body) > MAX_BODY:
        raise ApiError(413, f"the body is longer than {MAX_BODY} bytes")
    try:
        value = json.loads(body)
    except ValueError as exc:  # also bad UTF-8
        raise ApiError(400, f"the body is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(value).__name__}")
    return value


def canonical_id(text: str) -> str:
    """A backend id as the API names backends (``host:port``, lower-case host, port 80 by default,
    ``[v6]:port``), from what a client wrote; ApiError 400 when it is not one."""
    bad = ApiError(400, f"{text!r} is not a backend id; write host:port as in the backend's URL")
    if not text or any(char in text for char in ",/@?#") or any(char.isspace() for char in text):
        raise bad
    try:
        spec = parse_backend(f"http://{text}")
    except ValueError:
        raise bad from None
    return spec.id


def parse_new_backend(body: Mapping[str, Any]) -> BackendSpec:
    """The backend a ``POST /api/v1/backends`` body asks for (``{"url": U, "weight": N, "backup": B}``,
    read as the ``backends`` setting reads it); ApiError 400 with the config error otherwise."""
    try:
        return backend_from_entry(body)
    except ConfigError as err:
        raise ApiError(400, str(err)) from None


def parse_backend_change(body: Mapping[str, Any], backend_id: str) -> Tuple[Optional[int], Optional[str]]:
    """``(weight, state)`` from a ``PATCH`` body (``{"weight": N}`` and/or ``{"state": S}``; None where
    not given); ApiError 400 when a key is unknown, a value bad, or nothing is asked."""
    unknown = sorted(key for key in body if key not in ("weight", "state"))
    if unknown:
        raise ApiError(400, f"unknown key {unknown[0]!r}; give weight and/or state")
    if not body:
        raise ApiError(400, 'nothing to change; give {"weight": N} and/or {"state": "enabled"}')
    weight = state = None
    if "weight" in body:
        try:
            weight = parse_weight(str(body["weight"]), backend_id)
        except ValueError as exc:
            raise ApiError(400, f"weight: {exc}") from None
    if "state" in body:
        state = body["state"]
        if state not in BACKEND_STATES:
            raise ApiError(400, f"state: {state!r} is not a state; give one of: {', '.join(BACKEND_STATES)}")
    return weight, state


def parse_purge(body: Mapping[str, Any]) -> Tuple[bytes, bool]:
    """``(cache key, is a prefix)`` from a purge body, ``{"url": U}`` or ``{"prefix": P}``; else 400."""
    if len(body) != 1 or not set(body) <= {"url", "prefix"}:
        raise ApiError(
            400, 'give exactly one of {"url": "http://host/path"} or {"prefix": "http://host/img/"}'
        )
    ((name, value),) = body.items()
    key = url_key(value.encode("utf-8")) if isinstance(value, str) else None
    if key is None:
        raise ApiError(400, f"{name}: {value!r} is not an absolute URL; write http://host/path")
    return key, name == "prefix"


def check_token(authorization: Optional[bytes], token: Optional[bytes]) -> None:
    """The bearer-token rule for changes: 403 when no admin token is configured, 401 (in constant
    time) when ``authorization`` is not ``Bearer <token>``."""
    if token is None:
        raise ApiError(403, "set admin-token to enable changes through the API")
    scheme, _, credentials = (authorization or b"").partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(credentials.strip(), token):
        raise ApiError(401, "a valid Authorization: Bearer <admin-token> is required")


# --- the Twisted shell -----------------------------------------------------------------------


class ApiResource(Resource):
    """``/api/``: every endpoint of :data:`ENDPOINTS`, JSON in and out.

    ``stats`` gives the live figures (which the ``--workers`` supervisor has
    merged), ``config`` the effective Config, ``token`` guards every change
    (None: changes are off). Changes go to ``changes`` when given (the
    ``--workers`` relay), else to a :class:`~powerlb.control.LocalControl` of
    ``control`` (the live backends) and ``cache`` (None when the cache is
    off); with neither, changes are refused with 403. ``series`` gives the
    dashboard's charts (:meth:`powerlb.timeseries.SeriesKeeper.series`; None:
    ``GET /api/v1/series`` answers 404).
    """

    isLeaf = True

    def __init__(
        self,
        stats: Callable[[], Dict[str, Any]],
        config: Callable[[], Config],
        control: Union[BackendControl, PoolDirectory, None] = None,
        cache: Optional[CacheLayer] = None,
        token: Optional[str] = None,
        changes: Optional[Control] = None,
        series: Optional[Callable[[], Dict[str, Any]]] = None,
    ) -> None:
        super().__init__()
        self._series = series
        self._stats = stats
        self._config = config
        if changes is None and control is not None:
            changes = LocalControl(control, None if cache is None else cache.purge)
        self._changes = changes
        self._token = None if token is None else token.encode()
        self._handlers: Dict[Tuple[str, str], Callable[..., Any]] = {
            ("stats", "GET"): self.get_stats,
            ("backends", "GET"): self.list_backends,
            ("backends", "POST"): self.add_backend,
            ("backends/{id}", "GET"): self.get_backend,
            ("backends/{id}", "PATCH"): self.change_backend,
            ("backends/{id}", "DELETE"): self.remove_backend,
            ("pools", "GET"): self.list_pools,
            ("pools/{pool}", "GET"): self.get_pool,
            ("pools/{pool}/backends", "GET"): self.list_backends,
            ("pools/{pool}/backends", "POST"): self.add_backend,
            ("pools/{pool}/backends/{id}", "GET"): self.get_backend_of,
            ("pools/{pool}/backends/{id}", "PATCH"): self.change_backend_of,
            ("pools/{pool}/backends/{id}", "DELETE"): self.remove_backend_of,
            ("cache/purge", "POST"): self.purge,
            ("config", "GET"): self.get_config,
            ("series", "GET"): self.get_series,
        }

    def render(self, request: Request) -> Any:
        """Reads answer at once; a change answers once it is applied (``NOT_DONE_YET`` until then)."""
        try:
            endpoint, args = match_endpoint(
                [part.decode("utf-8", "replace") for part in request.postpath or []]
            )
            method = request.method.decode("ascii", "replace")
            method = "GET" if method == "HEAD" else method
            if method not in ENDPOINTS[endpoint]:
                allow = allowed_methods(endpoint)
                raise ApiError(405, f"{API_ROOT}{endpoint} answers {', '.join(allow)}", allow)
            if method != "GET":
                if self._changes is None:
                    raise ApiError(403, "this admin listener serves no changes")
                check_token(request.getHeader(b"authorization"), self._token)
            answer = self._handlers[endpoint, method](request, *args)
        except ApiError as err:
            answer = self._refusal(request, err)
        if not isinstance(answer, defer.Deferred):
            return self._body(request, *answer)
        gone: List[Failure] = []
        request.notifyFinish().addErrback(gone.append)

        def finish(done: Tuple[int, Any]) -> None:
            if not gone:  # the client is still there
                request.write(self._body(request, *done))
                request.finish()

        answer.addErrback(self._failed, request).addCallback(finish)
        return NOT_DONE_YET

    def _failed(self, failure: Failure, request: Request) -> Tuple[int, Any]:
        """A change that failed: ChangeFailed as its status, anything else as 500 (logged)."""
        err: Any = failure.value
        if failure.check(ApiError):
            return self._refusal(request, err)
        if failure.check(ChangeFailed):
            return err.status, {"error": err.message, **err.details}
        log.failure("api: a change failed", failure)
        return 500, {"error": f"the change failed: {failure.getErrorMessage()}"}

    @staticmethod
    def _refusal(request: Request, err: ApiError) -> Tuple[int, Any]:
        if err.allow:
            request.setHeader(b"allow", ", ".join(err.allow).encode())
        if err.status == 401:
            request.setHeader(b"www-authenticate", b'Bearer realm="powerlb"')
        return err.status, {"error": err.message}

    @staticmethod
    def _body(request: Request, status: int, body: Any) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body, indent=2).encode() + b"\n"

    def _json(self, request: Request) -> Dict[str, Any]:
        assert request.content is not None  # twisted.web sets it before rendering
        return parse_json_body(request.getHeader(b"content-type"), request.content.read(MAX_BODY + 1))

    def _apply(
        self, change: Change, answer: Callable[[Dict[str, Any]], Tuple[int, Any]]
    ) -> defer.Deferred[Any]:
        """Make ``change``; then ``answer(result)``."""
        assert self._changes is not None
        return self._changes.apply(change).addCallback(answer)

    def _pools(self) -> Tuple[List[Dict[str, Any]], str]:
        """The stats' pools and the default pool's name (``default`` when the stats name none)."""
        pools = self._stats().get("pools") or []
        default = next((pool["name"] for pool in pools if pool.get("default")), "default")
        return pools, default

    def _pool(self, pool: Optional[str]) -> Tuple[str, str]:
        """``(pool name, name in changes)`` for ``pool`` (None: the default pool, ``""`` in
        changes); 404 naming the pools when there is no such pool."""
        pools, default = self._pools()
        if pool is None:
            return default, ""
        names = [entry["name"] for entry in pools] or [default]
        if pool not in names:
            raise ApiError(404, f"no pool {pool!r}; the pools are: {', '.join(names)}")
        return pool, pool

    def _backends(self, pool: str) -> List[Dict[str, Any]]:
        """The stats' entries of the backends of ``pool``."""
        default = self._pools()[1]
        return [entry for entry in self._stats().get("backends", []) if entry.get("pool", default) == pool]

    def _snapshot(self, backend_id: str, pool: Optional[str] = None) -> Dict[str, Any]:
        """A backend's entry in the stats (of ``pool``, None: the default pool); 404 naming the
        known ones when there is none."""
        wanted = canonical_id(backend_id)
        snapshots = self._backends(self._pool(pool)[0])
        for snapshot in snapshots:
            if snapshot["id"] == wanted:
                return snapshot
        known = ", ".join(snapshot["id"] for snapshot in snapshots) or "none"
        raise ApiError(404, f"no backend {backend_id!r}; the backends are: {known}")

    def get_stats(self, request: Request) -> Tuple[int, Any]:
        """``GET /api/v1/stats``: powerlb's version, counters, backends and cache figures."""
        return 200, {"version": __version__, **self._stats()}

    def list_pools(self, request: Request) -> Tuple[int, Any]:
        """``GET /api/v1/pools``: every pool's name, algorithm and backend counts."""
        return 200, {"pools": self._pools()[0]}

    def get_pool(self, request: Request, pool: str) -> Tuple[int, Any]:
        """``GET /api/v1/pools/<pool>``: one pool's figures and its backends'."""
        name = self._pool(pool)[0]
        summary = next((entry for entry in self._pools()[0] if entry["name"] == name), {"name": name})
        return 200, {**summary, "backends": self._backends(name)}

    def list_backends(self, request: Request, pool: Optional[str] = None) -> Tuple[int, Any]:
        """``GET /api/v1/backends`` (the default pool's), ``GET /api/v1/pools/<pool>/backends``:
        every backend's figures and state."""
        return 200, {"backends": self._backends(self._pool(pool)[0])}

    def get_backend(self, request: Request, backend_id: str, pool: Optional[str] = None) -> Tuple[int, Any]:
        """``GET /api/v1/backends/<id>``: one backend's figures and state."""
        return 200, self._snapshot(backend_id, pool)

    def get_backend_of(self, request: Request, pool: str, backend_id: str) -> Tuple[int, Any]:
        """``GET /api/v1/pools/<pool>/backends/<id>``."""
        return self.get_backend(request, backend_id, pool)

    def add_backend(self, request: Request, pool: Optional[str] = None) -> defer.Deferred[Any]:
        """``POST /api/v1/backends`` (``/api/v1/pools/<pool>/backends``): a new backend, healthy
        until its checks say otherwise; 409 if known."""
        name, where = self._pool(pool)
        spec = parse_new_backend(self._json(request))
        if any(snapshot["id"] == spec.id for snapshot in self._backends(name)):
            path = f"{API_ROOT}backends" if pool is None else f"{API_ROOT}pools/{name}/backends"
            raise ApiError(409, f"backend {spec.id} exists; change it with PATCH {path}/{spec.id}")

        def added(result: Dict[str, Any]) -> Tuple[int, Any]:
            log.info(
                "api: backend {url} added to pool {pool} with weight {weight}",
                url=spec.url,
                pool=name,
                weight=spec.weight,
            )
            path = f"{API_ROOT}backends" if pool is None else f"{API_ROOT}pools/{name}/backends"
            request.setHeader(b"location", f"{path}/{spec.id}".encode())
            return 201, {**self._snapshot(spec.id, pool), **result}

        return self._apply(Change.add(spec, where), added)

    def change_backend(
        self, request: Request, backend_id: str, pool: Optional[str] = None
    ) -> defer.Deferred[Any]:
        """``PATCH /api/v1/backends/<id>``: a new weight and/or state, both checked before either is set."""
        where = self._pool(pool)[1]
        known = self._snapshot(backend_id, pool)["id"]
        weight, state = parse_backend_change(self._json(request), known)

        def changed(result: Dict[str, Any]) -> Tuple[int, Any]:
            if weight is not None:
                log.info("api: backend {id} now has weight {weight}", id=known, weight=weight)
            if state is not None:
                log.info("api: backend {id} is now {state}", id=known, state=state)
            return 200, {**self._snapshot(known, pool), **result}

        return self._apply(Change("set", backend=known, weight=weight, state=state, pool=where), changed)

    def change_backend_of(self, request: Request, pool: str, backend_id: str) -> defer.Deferred[Any]:
        """``PATCH /api/v1/pools/<pool>/backends/<id>``."""
        return self.change_backend(request, backend_id, pool)

    def remove_backend(
        self, request: Request, backend_id: str, pool: Optional[str] = None
    ) -> defer.Deferred[Any]:
        """``DELETE /api/v1/backends/<id>``: out of the balancer now; requests in flight finish."""
        name, where = self._pool(pool)
        known = self._snapshot(backend_id, pool)["id"]
        if len(self._backends(name)) == 1:
            raise ApiError(409, f"{known} is the last backend; add another before removing it")

        def removed(result: Dict[str, Any]) -> Tuple[int, Any]:
            log.info("api: backend {id} removed from pool {pool}", id=known, pool=name)
            return 200, {"removed": known, **result}

        return self._apply(Change("remove", backend=known, pool=where), removed)

    def remove_backend_of(self, request: Request, pool: str, backend_id: str) -> defer.Deferred[Any]:
        """``DELETE /api/v1/pools/<pool>/backends/<id>``."""
        return self.remove_backend(request, backend_id, pool)

    def purge(self, request: Request) -> defer.Deferred[Any]:
        """``POST /api/v1/cache/purge``: remove every stored response of a URL or a URL prefix."""
        assert self._changes is not None
        if not self._changes.caching:
            raise ApiError(404, "the cache is off (cache-size 0)")
        key, prefix = parse_purge(self._json(request))
        return self._apply(Change("purge", key=key, prefix=prefix), lambda result: (200, result))

    def get_config(self, request: Request) -> Tuple[int, Any]:
        """``GET /api/v1/config``: the effective configuration with the YAML keys, secrets redacted."""
        return 200, config_to_mapping(self._config())

    def get_series(self, request: Request) -> Tuple[int, Any]:
        """``GET /api/v1/series``: per pool, the figures of the last 15 minutes the dashboard charts."""
        if self._series is None:
            raise ApiError(404, "this admin listener keeps no series")
        return 200, self._series()
