"""Run-time changes to a powerlb, and the messages that carry them to ``--workers`` processes.

A :class:`Change` is one thing the runtime API (or a ``PURGE``) asks for: add,
remove or re-weight a backend, set its state, purge the cache. The API makes
every change through a :class:`Control`: :class:`LocalControl` applies it to
the live backends and cache of this process; the ``--workers`` supervisor
(:class:`powerlb.workers.WorkerSupervisor`) relays it to every worker and
answers once each has applied it (:func:`relay_verdict`).

The supervisor and its workers talk over their pipes in JSON lines, one
message a line, each carrying the protocol version (:data:`VERSION`):

* ``{"v": 1, "type": "apply", "id": N, "change": {...}}`` supervisor -> worker:
  apply this change, answer with the same ``id``;
* ``{"v": 1, "type": "applied", "id": N, "result": {...}, "error": null, "stats": {...}}``
  worker -> supervisor: done (``error`` null) or not (``error`` says why),
  with the worker's stats snapshot taken just after;
* ``{"v": 1, "type": "report", "stats": {...}}`` worker -> supervisor: the
  stats snapshot sent every second;
* ``{"v": 1, "type": "forward", "change": {...}}`` worker -> supervisor: a
  change the worker made on its own (a ``PURGE`` request it served), for the
  supervisor to relay to the other workers.

:func:`encode` and :func:`decode` are pure; :func:`decode` raises
:class:`ProtocolError` on anything else.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

from twisted.internet import defer

from powerlb.backend import BACKEND_STATES, Backend, BackendSpec
from powerlb.config import ConfigError, backend_from_entry

#: The version of the supervisor <-> worker messages; a message of another version is refused.
VERSION = 1

#: What a :class:`Change` can do.
OPS = ("add", "set", "remove", "purge")


class ProtocolError(ValueError):
    """A line on the supervisor <-> worker pipe that is not a message of this version."""


class ChangeFailed(Exception):
    """A change that was not (or not everywhere) applied: the HTTP ``status`` the API answers,
    a one-line ``message`` and ``details`` for the JSON body (e.g. which workers failed)."""

    def __init__(self, status: int, message: str, details: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.details = dict(details or {})


@dataclasses.dataclass(frozen=True)
class Change:
    """One run-time change (immutable).

    ``add``: ``backend`` is the new backend's URL, with ``weight`` and ``backup``;
    ``set``: ``backend`` is an id (``host:port``), ``weight`` and/or ``state`` (None: unchanged);
    ``remove``: ``backend`` is an id; ``purge``: the cache ``key`` (a URL, or a URL prefix
    when ``prefix``). ``pool`` names the pool of a backend change (``""``: the default pool).
    """

    op: str
    backend: str = ""
    weight: Optional[int] = None
    state: Optional[str] = None
    backup: bool = False
    key: bytes = b""
    prefix: bool = False
    pool: str = ""

    @classmethod
    def add(cls, spec: BackendSpec, pool: str = "") -> Change:
        """Add the backend ``spec`` describes (to ``pool``)."""
        return cls("add", backend=spec.url, weight=spec.weight, backup=spec.backup, pool=pool)

    def to_json(self) -> Dict[str, Any]:
        """The change as a JSON object holds it (only the fields its op uses; ``pool`` when set)."""
        where = {"pool": self.pool} if self.pool else {}
        if self.op == "add":
            return {"op": "add", "url": self.backend, "weight": self.weight, "backup": self.backup, **where}
        if self.op == "set":
            return {"op": "set", "id": self.backend, "weight": self.weight, "state": self.state, **where}
        if self.op == "remove":
            return {"op": "remove", "id": self.backend, **where}
        # a cache key is bytes; latin-1 maps each byte to one character and back
        return {"op": "purge", "key": self.key.decode("latin-1"), "prefix": self.prefix}


def change_from_json(value: Any) -> Change:
    """The :class:`Change` a JSON object describes (:meth:`Change.to_json`); ProtocolError otherwise."""
    if not isinstance(value, dict):
        raise ProtocolError(f"a change must be a JSON object, not {type(value).__name__}")
    op = value.get("op")
    pool = _field(value, "pool", str, optional=True) or ""
    if op == "add":
        url, weight, backup = (
            _field(value, "url", str),
            _field(value, "weight", int),
            _field(value, "backup", bool),
        )
        return Change("add", backend=url, weight=weight, backup=backup, pool=pool)
    if op == "set":
        weight, state = (
            _field(value, "weight", int, optional=True),
            _field(value, "state", str, optional=True),
        )
        if state is not None and state not in BACKEND_STATES:
            raise ProtocolError(f"state {state!r} is not one of {', '.join(BACKEND_STATES)}")
        if weight is None and state is None:
            raise ProtocolError("a set change needs a weight or a state")
        return Change("set", backend=_field(value, "id", str), weight=weight, state=state, pool=pool)
    if op == "remove":
        return Change("remove", backend=_field(value, "id", str), pool=pool)
    if op == "purge":
        key = _field(value, "key", str)
        try:
            raw = key.encode("latin-1")
        except UnicodeEncodeError:
            raise ProtocolError("a purge key must be latin-1 text (one character a byte)") from None
        return Change("purge", key=raw, prefix=_field(value, "prefix", bool))
    raise ProtocolError(f"op {op!r} is not one of {', '.join(OPS)}")


def _field(value: Mapping[str, Any], name: str, kind: type, optional: bool = False) -> Any:
    item = value.get(name)
    if item is None and optional:
        return None
    # bool is an int in Python: a weight must not be true, a flag must be a real bool
    if not isinstance(item, kind) or (kind is int and isinstance(item, bool)):
        raise ProtocolError(f"{name!r} must be {kind.__name__}, not {item!r}")
    return item


@dataclasses.dataclass(frozen=True)
class Apply:
    """Supervisor -> worker: apply ``change`` and answer :class:`Applied` with the same ``id``."""

    id: int
    change: Change


@dataclasses.dataclass(frozen=True)
class Applied:
    """Worker -> supervisor: change ``id`` applied (``error`` None, ``result`` e.g. ``{"purged": 2}``)
    or not (``error`` says why), and the worker's ``stats`` just after."""

    id: int
    result: Dict[str, int]
    error: Optional[str]
    stats: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Report:
    """Worker -> supervisor: the worker's stats snapshot (every second)."""

    stats: Dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Forward:
    """Worker -> supervisor: a change the worker made itself (a ``PURGE``), for the other workers."""

    change: Change


Message = Union[Apply, Applied, Report, Forward]


def encode(message: Message) -> bytes:
    """One message as a JSON line (newline-terminated)."""
    body: Dict[str, Any] = {"v": VERSION}
    if isinstance(message, Apply):
        body.update(type="apply", id=message.id, change=message.change.to_json())
    elif isinstance(message, Applied):
        body.update(
            type="applied", id=message.id, result=message.result, error=message.error, stats=message.stats
        )
    elif isinstance(message, Report):
        body.update(type="report", stats=message.stats)
    else:
        body.update(type="forward", change=message.change.to_json())
    return json.dumps(body, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> Message:
    """The message one line holds (without or with its newline); ProtocolError when it is not one."""
    try:
        body = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not JSON ({exc})") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"a message must be a JSON object, not {type(body).__name__}")
    if body.get("v") != VERSION:
        raise ProtocolError(f"version {body.get('v')!r} is not {VERSION}")
    kind = body.get("type")
    if kind == "apply":
        return Apply(_field(body, "id", int), change_from_json(body.get("change")))
    if kind == "applied":
        result = _field(body, "result", dict)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in result.values()):
            raise ProtocolError(f"a result holds counts, not {result!r}")
        return Applied(
            _field(body, "id", int),
            result,
            _field(body, "error", str, optional=True),
            _field(body, "stats", dict),
        )
    if kind == "report":
        return Report(_field(body, "stats", dict))
    if kind == "forward":
        return Forward(change_from_json(body.get("change")))
    raise ProtocolError(f"type {kind!r} is not one of apply, applied, report, forward")


# --- applying changes ------------------------------------------------------------------------


class BackendControl(Protocol):
    """What backend changes apply to: the live backends of one pool (:class:`powerlb.pool.Pool`)."""

    backends: List[Backend]

    def add_backend(self, spec: BackendSpec) -> Backend:
        """Start sending requests to a new backend."""

    def remove_backend(self, backend: Backend) -> None:
        """Take a backend out; requests in flight finish."""

    def set_backend_weight(self, backend: Backend, weight: int) -> None:
        """Change a backend's weight."""


@runtime_checkable
class PoolDirectory(Protocol):
    """Pools by name (``PowerLBService``): backend changes go to the pool they name."""

    def pool(self, name: str) -> BackendControl:
        """The pool ``name`` (``""``: the default pool); ChangeFailed 404 when there is none."""


#: A cache's purge entry point: ``(key, prefix) -> how many stored responses were removed``.
Purge = Callable[[bytes, bool], int]


def apply_change(
    target: Union[BackendControl, PoolDirectory], purge: Optional[Purge], change: Change
) -> Dict[str, int]:
    """Apply ``change`` to ``target`` (a pool, or the pool the change names among the pools of
    a :class:`PoolDirectory`) and the cache behind ``purge`` (None when it is off); the result
    (``{"purged": n}`` for a purge, else empty). ChangeFailed (409) when it does not fit the live
    state (an unknown or a known backend, the last one, the cache off; 404: an unknown pool),
    before any part of it is made."""
    if change.op == "purge":
        if purge is None:
            raise ChangeFailed(409, "the cache is off (cache-size 0)")
        return {"purged": purge(change.key, change.prefix)}
    if isinstance(target, PoolDirectory):
        target = target.pool(change.pool)
    elif change.pool:
        raise ChangeFailed(404, f"no pool {change.pool!r}")
    if change.op == "add":
        try:
            spec = backend_from_entry(
                {"url": change.backend, "weight": change.weight, "backup": change.backup}
            )
        except ConfigError as err:
            raise ChangeFailed(400, str(err)) from None
        if any(backend.id == spec.id for backend in target.backends):
            raise ChangeFailed(409, f"backend {spec.id} exists")
        target.add_backend(spec)
        return {}
    backend = next((b for b in target.backends if b.id == change.backend), None)
    if backend is None:
        raise ChangeFailed(409, f"no backend {change.backend}")
    if change.op == "remove":
        if len(target.backends) == 1:
            raise ChangeFailed(409, f"{backend.id} is the last backend")
        target.remove_backend(backend)
        return {}
    if change.weight is not None:
        target.set_backend_weight(backend, change.weight)
    if change.state is not None:
        backend.set_state(change.state)
    return {}


def kept_by_reload(
    changes: Sequence[Change], backend_ids: Sequence[str], pools: Optional[Mapping[str, Sequence[str]]] = None
) -> List[Change]:
    """What of ``changes`` a reload keeps, as a reload does in one process: backends and weights
    become the file's again, the states of the backends that stay are kept (``backend_ids``: of
    the default pool; ``pools``: the ids of each pool by name, for changes naming their pool)."""
    pools = pools or {}
    return [
        Change("set", backend=change.backend, state=change.state, pool=change.pool)
        for change in changes
        if change.op == "set"
        and change.state is not None
        and change.backend in (pools.get(change.pool, ()) if change.pool else backend_ids)
    ]


class Control(Protocol):
    """Where the runtime API's changes go: :class:`LocalControl` or the ``--workers`` relay."""

    @property
    def caching(self) -> bool:
        """Whether there is a cache to purge."""

    def apply(self, change: Change) -> defer.Deferred[Dict[str, Any]]:
        """Make ``change``; fires with its result (see :func:`apply_change`; the relay adds
        ``workers``, the pids that applied it) or fails with ChangeFailed."""


class LocalControl:
    """The changes of one process: applied at once to ``target`` and its cache (``purge``)."""

    def __init__(self, target: Union[BackendControl, PoolDirectory], purge: Optional[Purge]) -> None:
        self.target = target
        self.purge = purge
        self.caching = purge is not None

    def apply(self, change: Change) -> defer.Deferred[Dict[str, Any]]:
        """Apply ``change`` now; a Deferred that has already fired."""
        return defer.maybeDeferred(apply_change, self.target, self.purge, change)


# --- the relay's verdict ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WorkerOutcome:
    """How one worker took a relayed change: its ``result`` when it applied it, else ``error``
    (``timed_out`` when it did not answer in time)."""

    worker: int
    pid: Optional[int]
    result: Optional[Dict[str, int]] = None
    error: str = ""
    timed_out: bool = False


def relay_verdict(outcomes: Sequence[WorkerOutcome]) -> Dict[str, Any]:
    """The answer to a change relayed to every worker: when each applied it, their results summed
    plus ``workers`` (their pids, in worker order). Otherwise ChangeFailed naming the workers that
    did not: 504 when every one of those timed out, else 502; 503 when no worker is running."""
    if not outcomes:
        raise ChangeFailed(503, "no worker is running; the change reaches the workers as they start")
    applied = [o for o in outcomes if o.result is not None]
    missing = [o for o in outcomes if o.result is None]
    if missing:
        named = "; ".join(f"worker {o.worker} (pid {o.pid}): {o.error}" for o in missing)
        raise ChangeFailed(
            504 if all(o.timed_out for o in missing) else 502,
            f"applied by {len(applied)} of {len(outcomes)} workers; not by {named}",
            {
                "applied": [o.pid for o in applied],
                "failed": [{"worker": o.worker, "pid": o.pid, "error": o.error} for o in missing],
            },
        )
    merged: Dict[str, Any] = {}
    for outcome in applied:
        for key, count in (outcome.result or {}).items():
            merged[key] = merged.get(key, 0) + count
    merged["workers"] = [o.pid for o in applied]
    return merged
