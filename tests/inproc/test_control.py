"""powerlb.control: the change messages (pure), applying a change, the relay's verdict and gathering."""

from __future__ import annotations

import io
import json
from typing import Any, Dict, List, Optional

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from powerlb import ctl
from powerlb.api import ApiResource
from powerlb.backend import BACKEND_STATES, Backend, BackendSpec
from powerlb.control import (
    VERSION,
    Applied,
    Apply,
    Change,
    ChangeFailed,
    Forward,
    LocalControl,
    ProtocolError,
    Report,
    WorkerOutcome,
    apply_change,
    change_from_json,
    decode,
    encode,
    kept_by_reload,
    relay_verdict,
)
from powerlb.settings import Config
from powerlb.values import parse_backend
from powerlb.workers import CHANGE_TIMEOUT, WorkerSupervisor, _WorkerProcess

ids = st.text(min_size=1, max_size=30)
pools = st.just("") | st.text(min_size=1, max_size=10)
changes = st.one_of(
    st.builds(
        lambda url, weight, backup, pool: Change("add", backend=url, weight=weight, backup=backup, pool=pool),
        ids,
        st.integers(1, 1000),
        st.booleans(),
        pools,
    ),
    st.builds(
        lambda backend, weight, state: Change("set", backend=backend, weight=weight, state=state),
        ids,
        st.integers(1, 1000),
        st.none() | st.sampled_from(BACKEND_STATES),
    ),
    st.builds(
        lambda backend, state: Change("set", backend=backend, state=state),
        ids,
        st.sampled_from(BACKEND_STATES),
    ),
    st.builds(lambda backend, pool: Change("remove", backend=backend, pool=pool), ids, pools),
    st.builds(
        lambda key, prefix: Change("purge", key=key, prefix=prefix), st.binary(max_size=40), st.booleans()
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)
counts = st.dictionaries(st.text(max_size=8), st.integers(0, 10**6), max_size=3)
messages = st.one_of(
    st.builds(Apply, st.integers(0, 2**40), changes),
    st.builds(
        Applied,
        st.integers(0, 2**40),
        counts,
        st.none() | st.text(max_size=20),
        st.dictionaries(st.text(max_size=5), json_values, max_size=3),
    ),
    st.builds(Report, st.dictionaries(st.text(max_size=5), json_values, max_size=3)),
    st.builds(Forward, changes),
)


@given(messages)
def test_every_message_survives_encoding(message: Any) -> None:
    line = encode(message)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert decode(line) == message
    assert json.loads(line)["v"] == VERSION


@given(changes)
def test_every_change_survives_json(change: Change) -> None:
    assert change_from_json(json.loads(json.dumps(change.to_json()))) == change


@pytest.mark.parametrize(
    ("line", "says"),
    [
        (b"", "not JSON"),
        (b"{", "not JSON"),
        (b"[]", "must be a JSON object, not list"),
        (b'{"type": "report", "stats": {}}', "version None is not 1"),
        (b'{"v": 2, "type": "report", "stats": {}}', "version 2 is not 1"),
        (b'{"v": 1, "type": "hello"}', "type 'hello' is not one of"),
        (b'{"v": 1, "type": "report"}', "'stats' must be dict, not None"),
        (
            b'{"v": 1, "type": "apply", "id": "7", "change": {"op": "remove", "id": "a:1"}}',
            "'id' must be int",
        ),
        (
            b'{"v": 1, "type": "apply", "id": true, "change": {"op": "remove", "id": "a:1"}}',
            "'id' must be int",
        ),
        (b'{"v": 1, "type": "apply", "id": 1, "change": ["remove"]}', "a change must be a JSON object"),
        (b'{"v": 1, "type": "apply", "id": 1, "change": {"op": "drop"}}', "op 'drop' is not one of"),
        (b'{"v": 1, "type": "forward", "change": {"op": "set", "id": "a:1"}}', "needs a weight or a state"),
        (b'{"v": 1, "type": "forward", "change": {"op": "set", "id": "a:1", "state": "up"}}', "state 'up'"),
        (
            b'{"v": 1, "type": "forward", "change": {"op": "purge", "key": "\\u20ac", "prefix": false}}',
            "latin-1",
        ),
        (b'{"v": 1, "type": "forward", "change": {"op": "purge", "key": "k"}}', "'prefix' must be bool"),
        (b'{"v": 1, "type": "applied", "id": 1, "result": {"n": "2"}, "error": null, "stats": {}}', "counts"),
    ],
)
def test_decode_refuses(line: bytes, says: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode(line)
    assert says in str(caught.value)


def outcome(
    worker: int, result: Optional[Dict[str, int]] = None, error: str = "", timed_out: bool = False
) -> Any:
    return WorkerOutcome(worker, 100 + worker, result, error, timed_out)


@pytest.mark.parametrize(
    ("outcomes", "answer"),
    [
        ([outcome(0, {}), outcome(1, {})], {"workers": [100, 101]}),
        ([outcome(0, {"purged": 2}), outcome(1, {"purged": 1})], {"purged": 3, "workers": [100, 101]}),
    ],
)
def test_relay_verdict_when_every_worker_applied(
    outcomes: List[WorkerOutcome], answer: Dict[str, Any]
) -> None:
    assert relay_verdict(outcomes) == answer


@pytest.mark.parametrize(
    ("outcomes", "status", "says", "failed"),
    [
        ([], 503, "no worker is running", []),
        (
            [outcome(0, {}), outcome(1, error="no answer", timed_out=True)],
            504,
            "applied by 1 of 2 workers",
            [101],
        ),
        (
            [outcome(0, error="exited"), outcome(1, error="no answer", timed_out=True)],
            502,
            "(pid 100): exited",
            [100, 101],
        ),
        (
            [outcome(0, {}), outcome(1, error="no backend a:1")],
            502,
            "worker 1 (pid 101): no backend a:1",
            [101],
        ),
    ],
)
def test_relay_verdict_names_the_workers_that_did_not_apply(
    outcomes: List[WorkerOutcome], status: int, says: str, failed: List[int]
) -> None:
    with pytest.raises(ChangeFailed) as caught:
        relay_verdict(outcomes)
    assert (caught.value.status, [f["pid"] for f in caught.value.details.get("failed", [])]) == (
        status,
        failed,
    )
    assert says in caught.value.message


class Target:
    """A BackendControl of plain Backends."""

    def __init__(self, *urls: str) -> None:
        self.backends = [Backend(parse_backend(url)) for url in urls]

    def add_backend(self, spec: BackendSpec) -> Backend:
        backend = Backend(spec)
        self.backends.append(backend)
        return backend

    def remove_backend(self, backend: Backend) -> None:
        self.backends.remove(backend)

    def set_backend_weight(self, backend: Backend, weight: int) -> None:
        backend.set_weight(weight)


class Pools:
    """A PoolDirectory of Targets; the default pool is ``web``."""

    def __init__(self, **pools: Target) -> None:
        self.pools = pools

    def pool(self, name: str) -> Target:
        if name not in self.pools and name:
            raise ChangeFailed(404, f"no pool {name!r}")
        return self.pools[name or "web"]


def test_apply_change_goes_to_the_pool_it_names() -> None:
    pools = Pools(web=Target("http://a:1"), api=Target("http://a:1", "http://b:2"))
    apply_change(pools, None, Change("set", backend="a:1", state="disabled", pool="api"))
    apply_change(pools, None, Change("remove", backend="b:2", pool="api"))
    apply_change(pools, None, Change("set", backend="a:1", weight=5))
    assert [(b.id, b.weight, b.state) for b in pools.pools["api"].backends] == [("a:1", 1, "disabled")]
    assert [(b.id, b.weight, b.state) for b in pools.pools["web"].backends] == [("a:1", 5, "enabled")]
    for target in (pools, Target("http://a:1")):
        with pytest.raises(ChangeFailed) as failed:
            apply_change(target, None, Change("remove", backend="a:1", pool="nope"))
        assert failed.value.status == 404


def test_apply_change_to_live_backends() -> None:
    target = Target("http://a:1")
    assert apply_change(target, None, Change("add", backend="http://b:2", weight=3, backup=True)) == {}
    assert [(b.id, b.weight, b.backup) for b in target.backends] == [("a:1", 1, False), ("b:2", 3, True)]
    apply_change(target, None, Change("set", backend="b:2", weight=4, state="draining"))
    assert (target.backends[1].weight, target.backends[1].state) == (4, "draining")
    apply_change(target, None, Change("remove", backend="a:1"))
    assert [b.id for b in target.backends] == ["b:2"]
    purged: List[Any] = []
    assert apply_change(
        target, lambda key, prefix: purged.append((key, prefix)) or 2, Change("purge", key=b"k")
    ) == {"purged": 2}
    assert purged == [(b"k", False)]


@pytest.mark.parametrize(
    ("change", "status", "says"),
    [
        (Change("add", backend="http://a:1", weight=1), 409, "backend a:1 exists"),
        (Change("add", backend="ftp://c", weight=1), 400, "backend"),
        (Change("set", backend="z:9", weight=2), 409, "no backend z:9"),
        (Change("remove", backend="z:9"), 409, "no backend z:9"),
        (Change("purge", key=b"k"), 409, "the cache is off"),
    ],
)
def test_apply_change_refuses_what_does_not_fit(change: Change, status: int, says: str) -> None:
    target = Target("http://a:1")
    with pytest.raises(ChangeFailed) as caught:
        apply_change(target, None, change)
    assert caught.value.status == status and says in caught.value.message
    assert [b.id for b in target.backends] == ["a:1"]


def test_apply_change_keeps_the_last_backend() -> None:
    with pytest.raises(ChangeFailed, match="last backend"):
        apply_change(Target("http://a:1"), None, Change("remove", backend="a:1"))


# --- the supervisor's side, on a Clock, with workers that are only their pipes -------------


class Pipe:
    """A worker process's transport: what the supervisor writes to its stdin."""

    def __init__(self, pid: int) -> None:
        self.pid: Optional[int] = pid
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def sent(self) -> List[Any]:
        return [decode(line) for line in self.written.splitlines()]


def supervisor_with_workers(count: int) -> Any:
    clock = Clock()
    supervisor = WorkerSupervisor(Config(listen="tcp:0", workers=count), clock)
    for index in range(count):
        worker = _WorkerProcess(supervisor, index)
        worker.transport = Pipe(100 + index)
        supervisor.workers[index] = worker
    return supervisor, clock


def acknowledge(worker: _WorkerProcess, error: Optional[str] = None, **result: int) -> None:
    (request,) = [m for m in worker.transport.sent() if isinstance(m, Apply)][-1:]
    worker.report_received(encode(Applied(request.id, result, error, {"requests": worker.index})))


def failure_of(deferred: defer.Deferred) -> ChangeFailed:
    failures: List[Any] = []
    deferred.addErrback(failures.append)
    (failure,) = failures
    return failure.value


def test_supervisor_answers_once_every_worker_acknowledged() -> None:
    supervisor, _ = supervisor_with_workers(2)
    answered: List[Any] = []
    supervisor.apply(Change("purge", key=b"k")).addCallback(answered.append)
    one, two = supervisor.workers
    acknowledge(one, purged=1)
    assert answered == []
    line = encode(Applied(two.transport.sent()[0].id, {"purged": 2}, None, {"requests": 7}))
    two.report_received(line[:20])  # part of a line: nothing yet
    assert answered == []
    two.report_received(line[20:])
    assert answered == [{"purged": 3, "workers": [100, 101]}]
    assert two.snapshot == {"requests": 7}  # the acknowledgment's stats: the merged view is current
    assert supervisor.changes == []  # purges are not kept for workers to come


def test_supervisor_names_a_worker_that_did_not_answer_in_time_and_keeps_the_change() -> None:
    supervisor, clock = supervisor_with_workers(2)
    change = Change("set", backend="a:1", state="draining")
    answer = supervisor.apply(change)
    acknowledge(supervisor.workers[0])
    clock.advance(CHANGE_TIMEOUT)
    failed = failure_of(answer)
    assert (failed.status, failed.details["applied"], failed.details["failed"][0]["pid"]) == (504, [100], 101)
    assert supervisor.changes == [change]  # worker 0 has it: so do workers started from now on
    acknowledge(supervisor.workers[1])  # too late: ignored


def test_supervisor_forgets_a_change_no_worker_applied() -> None:
    supervisor, _ = supervisor_with_workers(2)
    answer = supervisor.apply(Change("remove", backend="a:1"))
    for worker in supervisor.workers:
        acknowledge(worker, error="no backend a:1")
    assert failure_of(answer).status == 502
    assert supervisor.changes == []


def test_supervisor_relays_a_forwarded_purge_to_the_other_workers_only() -> None:
    supervisor, _ = supervisor_with_workers(3)
    origin = supervisor.workers[1]
    origin.report_received(encode(Forward(Change("purge", key=b"http://h/x"))))
    assert origin.transport.sent() == []
    for worker in (supervisor.workers[0], supervisor.workers[2]):
        (sent,) = worker.transport.sent()
        assert sent.change == Change("purge", key=b"http://h/x")


# --- the API's answers through a Control -----------------------------------------------------


class Failing:
    """A Control whose every change fails as the relay does when a worker timed out."""

    caching = True

    def apply(self, change: Change) -> defer.Deferred:
        return defer.fail(ChangeFailed(504, "applied by 1 of 2 workers; not by worker 1", {"applied": [100]}))


def render(resource: ApiResource, method: bytes, path: str, body: bytes) -> Any:
    request = DummyRequest(path.encode().split(b"/"))
    request.method = method
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer t"])
    request.content = io.BytesIO(body)
    answer = resource.render(request)
    if answer is not NOT_DONE_YET:  # answered at once, as Request.render then writes it
        request.write(answer)
        request.finish()
    assert request.finished
    return request.responseCode, json.loads(b"".join(request.written))


def test_api_answers_a_failed_relay_with_its_status_and_the_workers() -> None:
    backends = [{"id": "a:1"}, {"id": "b:2"}]
    resource = ApiResource(lambda: {"backends": backends}, Config, token="t", changes=Failing())
    status, body = render(resource, b"PATCH", "v1/backends/a:1", b'{"state": "draining"}')
    assert (status, body["applied"]) == (504, [100])
    assert body["error"].startswith("applied by 1 of 2 workers")
    # checked before the change goes anywhere
    assert render(resource, b"PATCH", "v1/backends/z:9", b'{"state": "draining"}')[0] == 404


def test_local_control_applies_at_once() -> None:
    target = Target("http://a:1")
    fired: List[Any] = []
    LocalControl(target, None).apply(Change("set", backend="a:1", weight=7)).addCallback(fired.append)
    assert fired == [{}] and target.backends[0].weight == 7


def test_a_reload_keeps_only_the_states_of_the_backends_that_stay() -> None:
    made = [
        Change("add", backend="http://c:3", weight=1),
        Change("set", backend="a:1", weight=4, state="draining"),
        Change("set", backend="b:2", weight=2),
        Change("set", backend="c:3", state="disabled"),
        Change("remove", backend="b:2"),
    ]
    assert kept_by_reload(made, ["a:1", "b:2"]) == [Change("set", backend="a:1", state="draining")]
    assert kept_by_reload([], ["a:1"]) == []
    in_pools = [
        Change("set", backend="a:1", state="disabled", pool="api"),
        Change("set", backend="b:2", state="disabled", pool="web"),
    ]
    assert kept_by_reload(in_pools, [], {"api": ["a:1"], "web": []}) == in_pools[:1]


def test_powerlb_ctl_waits_longer_than_the_workers_get_to_answer() -> None:
    assert CHANGE_TIMEOUT < ctl.TIMEOUT
