"""Fault injection: steady client load on powerlb while its backends are killed, hung and reset.

Three ``tests/support/fault_backend.py`` processes behind ``twistd -n powerlb`` (short
timeouts, quick health checks and outlier detection) take a bounded load of
a few client threads, each sending sequential requests (80 % GET, 20 % POST
with a small body) with a unique ``X-Request-Id``. Meanwhile a timeline
SIGKILLs one backend, hangs another, resets a third mid-response, and brings
them all back, always keeping at least one backend fully healthy. The run
happens once per variant (a module-scoped fixture); each test checks one
promise about what the clients saw and what reached the backends:

- no idempotent request fails while a backend is healthy;
- a non-idempotent request that fails gets a clean 502 or 504, never a hang,
  a cut connection or another status;
- no request reaches a backend twice, no non-idempotent request reaches two
  backends, and every request is answered by at most one backend;
- once the faults are over, every backend takes traffic again.

Run with ``-s`` to see the figures. Everything is bounded in time (every
socket has a timeout, every process is stopped by PID) and stays on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import random
import signal
import socket
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

from tests.support import HOST, REPO, Process, clean_env, get, start_server, start_twistd_powerlb, wait_until

BACKEND = REPO / "tests" / "support" / "fault_backend.py"
NAMES = ("a", "b", "c")
BODY_SIZE = 2048  # tests/support/fault_backend.py BODY_SIZE
THREADS = 4
POST_SHARE = 0.2
PAUSE = 0.01  # between two requests of one client thread
CLIENT_TIMEOUT = 8.0  # a request with no answer by then is a hang
RESPONSE_TIMEOUT = 1.0
SETTLE = 1.5  # after the last fault ends: time to take every backend back
RECOVERY = 1.0  # then: the window in which every request must succeed on every backend

LB_OPTIONS = [
    "--health-path", "/health",
    "--health-interval", "0.2",
    "--health-timeout", "0.3",
    "--health-fall", "2",
    "--health-rise", "2",
    "--response-timeout", str(RESPONSE_TIMEOUT),
    "--idle-timeout", "1",
    "--connect-timeout", "1",
    "--retries", "2",
    "--outlier-failures", "2",
    "--outlier-backoff", "1",
    "--cache-size", "0",
]  # fmt: skip


# --- the processes ---------------------------------------------------------------------


class Backends:
    """The three fault backends: started, signalled, killed and restarted by PID."""

    def __init__(self, tmp: Path, names: Tuple[str, ...] = NAMES) -> None:
        self.tmp = tmp
        self.names = names
        self.log = tmp / "requests.jsonl"
        self.procs: Dict[str, Process] = {}
        self.ports: Dict[str, int] = {}
        self.starts: Counter = Counter()

    def start_all(self) -> None:
        for name in self.names:

            def make(ports: List[int], name: str = name) -> Process:
                return self._process(name, ports[0])

            self.procs[name], (self.ports[name],) = start_server(make, 1, _answers_health)

    def _process(self, name: str, port: int) -> Process:
        self.starts[name] += 1
        args = [sys.executable, str(BACKEND), name, str(port), str(self.log)]
        log = self.tmp / f"backend-{name}-{self.starts[name]}.log"
        return Process(args, log, cwd=self.tmp, env=clean_env())

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5.0)

    def restart(self, name: str) -> None:
        """Start ``name`` again on its port (free since it was killed)."""
        proc = self.procs[name] = self._process(name, self.ports[name])
        wait_until(lambda: _answers_health([self.ports[name]]) or proc.exited(), f"backend {name} restarted")
        assert not proc.exited(), proc.describe()

    def set_mode(self, name: str, mode: str) -> None:
        proc = self.procs[name]
        before = proc.output().count(f"mode {mode}")
        os.kill(proc.pid, {"normal": signal.SIGHUP, "hang": signal.SIGUSR1, "reset": signal.SIGUSR2}[mode])
        wait_until(lambda: proc.output().count(f"mode {mode}") > before, f"backend {name} in mode {mode}")

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def entries(self) -> List[Dict[str, str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]


def _answers_health(ports: List[int]) -> bool:
    return get(ports[0], "/health", timeout=2.0).status == 200


# --- the client load -------------------------------------------------------------------


class Result:
    """What one client request got."""

    __slots__ = ("backend", "end", "id", "kind", "method", "start", "status")

    def __init__(self, request_id: str, method: str, start: float) -> None:
        self.id = request_id
        self.method = method
        self.start = start
        self.end = start
        self.status: Optional[int] = None
        self.backend = ""
        #: "ok"; "status-N" (any other answer, or a 200 with a wrong body: "bad-body");
        #: "cut" (head received, body cut); "reset"/"closed" (no answer); "timeout" (a hang).
        self.kind = "ok"


def send(port: int, request_id: str, method: str, t0: float) -> Result:
    result = Result(request_id, method, time.monotonic() - t0)
    conn = http.client.HTTPConnection(HOST, port, timeout=CLIENT_TIMEOUT)
    try:
        body = f"post {request_id}".encode() if method == "POST" else None
        conn.request(method, f"/item/{request_id}", body=body, headers={"X-Request-Id": request_id})
        resp = conn.getresponse()
        result.status = resp.status
        result.backend = resp.getheader("X-Backend", "")
        data = resp.read()
        if resp.status != 200:
            result.kind = f"status-{resp.status}"
        elif len(data) != BODY_SIZE or not data.startswith(f"{result.backend} {request_id}\n".encode()):
            result.kind = "bad-body"
    except http.client.IncompleteRead:
        result.kind = "cut"
    except socket.timeout:
        result.kind = "timeout"
    except (http.client.RemoteDisconnected, ConnectionError, http.client.BadStatusLine):
        result.kind = "reset" if result.status is None else "cut"
    except OSError as exc:
        result.kind = f"oserror-{type(exc).__name__}"
    finally:
        conn.close()
        result.end = time.monotonic() - t0
    return result


def client(port: int, number: int, t0: float, stop: threading.Event, results: List[Result]) -> None:
    rng = random.Random(number)
    for seq in itertools.count():
        if stop.is_set():
            return
        method = "POST" if rng.random() < POST_SHARE else "GET"
        results.append(send(port, f"t{number}-{seq}", method, t0))
        time.sleep(PAUSE)


# --- the scenario ----------------------------------------------------------------------

Step = Tuple[float, str, str]  # (seconds after the previous step, action, backend)


def cycle(killed: str, hung: str, reset: str) -> List[Step]:
    """One round of faults; at every moment at least one backend is fully healthy."""
    return [
        (1.5, "kill", killed),  # healthy: hung, reset
        (2.0, "hang", hung),  # healthy: reset
        (2.0, "restart", killed),  # healthy: reset, killed (once back)
        (1.5, "normal", hung),  # healthy: reset, killed
        (0.5, "reset", reset),  # healthy: killed, hung (back for 0.5 s)
        (2.0, "normal", reset),  # healthy: all
    ]


VARIANTS = {
    "short": cycle("a", "b", "c"),
    # Three rounds, each backend in each role once.
    "long": cycle("a", "b", "c") + cycle("b", "c", "a") + cycle("c", "a", "b"),
}


class Run:
    """Everything one scenario run produced."""

    def __init__(self) -> None:
        self.results: List[Result] = []
        self.entries: List[Dict[str, str]] = []
        self.events: List[Tuple[float, str]] = []
        self.recovery = (0.0, 0.0)  # window (seconds after start) in which all must be well
        self.lb_stats: Dict[str, Any] = {}
        self.lb_log = ""


def run_scenario(tmp: Path, steps: List[Step]) -> Run:
    run = Run()
    backends = Backends(tmp)
    lb: Optional[Process] = None
    stop = threading.Event()
    threads: List[threading.Thread] = []
    per_thread: List[List[Result]] = [[] for _ in range(THREADS)]
    try:
        backends.start_all()
        lb, (listen, admin) = start_twistd_powerlb(tmp, [backends.ports[name] for name in NAMES], *LB_OPTIONS)
        t0 = time.monotonic()
        for number in range(THREADS):
            thread = threading.Thread(
                target=client, args=(listen, number, t0, stop, per_thread[number]), daemon=True
            )
            thread.start()
            threads.append(thread)
        due = 0.0
        for delay, action, name in steps:
            due += delay
            time.sleep(max(0.0, due - (time.monotonic() - t0)))
            if action == "kill":
                backends.kill(name)
            elif action == "restart":
                backends.restart(name)
            else:
                backends.set_mode(name, action)
            run.events.append((time.monotonic() - t0, f"{action} {name}"))
        begin = time.monotonic() - t0 + SETTLE
        run.recovery = (begin, begin + RECOVERY)
        time.sleep(SETTLE + RECOVERY)
        stop.set()
        for thread in threads:
            thread.join(CLIENT_TIMEOUT + 2)
        assert not any(thread.is_alive() for thread in threads), "a client thread is stuck"
        run.lb_stats = get(admin, "/api/v1/stats").json()
    finally:
        stop.set()
        if lb is not None:
            lb.stop()
            run.lb_log = lb.output()
        backends.stop_all()
    run.results = sorted(itertools.chain.from_iterable(per_thread), key=lambda r: r.start)
    run.entries = backends.entries()
    report(run)
    return run


def report(run: Run) -> None:
    """Print the figures (shown with ``pytest -s``)."""
    by_method: Dict[str, Counter] = defaultdict(Counter)
    for result in run.results:
        by_method[result.method][result.kind] += 1
    seen_by = received_by(run.entries)
    twice = sum(1 for backends in seen_by.values() if len(backends) > 1)
    slowest = max((r.end - r.start for r in run.results), default=0.0)
    lines = [
        f"fault run: {len(run.results)} requests in {run.events[-1][0] + SETTLE + RECOVERY:.1f} s, "
        f"slowest {slowest:.2f} s",
        "  timeline: " + ", ".join(f"{at:.1f}s {what}" for at, what in run.events),
    ]
    for method in sorted(by_method):
        kinds = by_method[method]
        failed = sum(n for kind, n in kinds.items() if kind != "ok")
        lines.append(f"  {method}: {sum(kinds.values())} sent, {failed} failed {dict(sorted(kinds.items()))}")
    lines.append(f"  backend log: {len(run.entries)} lines; ids received by more than one backend: {twice}")
    if run.lb_stats:
        figures = {key: run.lb_stats.get(key) for key in ("requests", "errors", "upstream_errors")}
        ejections = {b["url"].rsplit(":", 1)[1]: b.get("ejections") for b in run.lb_stats["backends"]}
        lines.append(f"  powerlb: {figures}, ejections by port {ejections}")
    for result in run.results:
        if result.kind != "ok":
            lines.append(
                f"    failed {result.method} {result.id} at {result.start:.2f}-{result.end:.2f}s: "
                f"{result.kind} via {result.backend or '?'}; reached {seen_by.get(result.id, [])}"
            )
    print("\n" + "\n".join(lines))


def received_by(entries: List[Dict[str, str]]) -> Dict[str, List[str]]:
    """Request id -> the backends that received it (once per receipt)."""
    seen: Dict[str, List[str]] = defaultdict(list)
    for entry in entries:
        if entry["event"] == "recv":
            seen[entry["id"]].append(f"{entry['backend']}:{entry['mode']}")
    return seen


@pytest.fixture(
    scope="module", params=["short", pytest.param("long", marks=pytest.mark.heavy)], ids=lambda v: v
)
def run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    yield run_scenario(tmp_path_factory.mktemp(f"faults-{request.param}"), VARIANTS[request.param])


def describe(results: List[Result]) -> str:
    return "\n".join(
        f"{r.method} {r.id} {r.start:.2f}-{r.end:.2f}s: {r.kind} via {r.backend or '?'}" for r in results
    )


# --- the promises ----------------------------------------------------------------------


def test_load_ran(run: Run) -> None:
    """The scenario really put load through every phase (else the other tests prove little)."""
    assert len(run.results) > 200
    methods = Counter(r.method for r in run.results)
    assert methods["GET"] > 100 and methods["POST"] > 20, methods
    for at, what in run.events:
        near = [r for r in run.results if at - 0.5 <= r.start <= at + 0.5]
        assert len(near) > 5, f"no load around {what} at {at:.1f}s"


def test_no_hang(run: Run) -> None:
    """Every request was answered or cut well within the client timeout."""
    hung = [r for r in run.results if r.kind == "timeout"]
    assert not hung, describe(hung)
    # Worst case: every attempt (1 + --retries) waits out --response-timeout.
    slow = [r for r in run.results if r.end - r.start > 3 * RESPONSE_TIMEOUT + 1.0]
    assert not slow, describe(slow)


def test_idempotent_requests_never_fail(run: Run) -> None:
    failed = [r for r in run.results if r.method == "GET" and r.kind != "ok"]
    assert not failed, f"{len(failed)} GETs failed:\n{describe(failed)}"


def test_non_idempotent_failures_are_clean_502_or_504(run: Run) -> None:
    unclean = [
        r for r in run.results if r.method == "POST" and r.kind not in ("ok", "status-502", "status-504")
    ]
    assert not unclean, f"{len(unclean)} POSTs failed without a clean 502/504:\n{describe(unclean)}"


def test_no_request_reaches_a_backend_twice(run: Run) -> None:
    sent_ids = {r.id: r for r in run.results}
    received: Dict[str, List[str]] = defaultdict(list)
    answered: Dict[str, List[str]] = defaultdict(list)
    for entry in run.entries:
        assert entry["id"] in sent_ids, f"a backend received an id no client sent: {entry}"
        (received if entry["event"] == "recv" else answered)[entry["id"]].append(entry["backend"])
    problems = []
    for request_id, backends in received.items():
        result = sent_ids[request_id]
        if len(backends) != len(set(backends)):
            problems.append(f"{request_id} reached one backend twice: {backends}")
        if result.method != "GET" and len(backends) > 1:
            problems.append(f"{result.method} {request_id} reached several backends: {backends}")
        if len(answered[request_id]) > 1:
            problems.append(f"{request_id} was answered by several backends: {answered[request_id]}")
    # Every successful answer came from the backend that says it sent it.
    for result in run.results:
        if result.kind == "ok" and answered[result.id] != [result.backend]:
            problems.append(
                f"{result.id} answered by {result.backend!r}, backends sent {answered[result.id]}"
            )
    assert not problems, "\n".join(problems[:50])


def test_every_backend_serves_again_after_recovery(run: Run) -> None:
    begin, end = run.recovery
    window = [r for r in run.results if begin <= r.start <= end]
    assert len(window) > 20
    failed = [r for r in window if r.kind != "ok"]
    assert not failed, describe(failed)
    assert {r.backend for r in window} == set(NAMES), Counter(r.backend for r in window)


def test_powerlb_survived(run: Run) -> None:
    assert "Traceback" not in run.lb_log, run.lb_log[-5000:]
    assert run.lb_stats["requests"] >= len(run.results)


def test_fault_backend_modes(tmp_path: Path) -> None:
    """The test peer itself: hang holds the request, reset cuts the body, normal answers."""
    backends = Backends(tmp_path)
    try:
        backends.start_all()
        port = backends.ports["a"]
        backends.set_mode("a", "reset")
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            get(port, "/health", timeout=2.0)
        backends.set_mode("a", "hang")
        with pytest.raises(socket.timeout):
            get(port, "/health", timeout=0.5)
        backends.set_mode("a", "normal")
        assert get(port, "/health", timeout=2.0).status == 200
        backends.kill("b")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((HOST, backends.ports["b"]), timeout=1.0)
        backends.restart("b")
        answer = send(backends.ports["b"], "x-1", "POST", time.monotonic())
        assert (answer.kind, answer.backend) == ("ok", "b")
        # The backend logs "sent" after its last write, which the client may read first.
        wait_until(lambda: len(backends.entries()) >= 2, "the backend's log of x-1")
    finally:
        backends.stop_all()
    # /health carries no X-Request-Id, so only x-1 is logged: received, then sent.
    assert [(e["id"], e["method"], e["event"]) for e in backends.entries()] == [
        ("x-1", "POST", "recv"),
        ("x-1", "POST", "sent"),
    ]


# --- the same faults one at a time, without load: deterministic ----------------------


def one_by_one(
    tmp: Path, names: Tuple[str, ...], faults: Dict[str, str], requests: List[str]
) -> List[Result]:
    """Put the backends ``names`` in their ``faults`` modes behind powerlb, send ``requests`` in turn."""
    backends = Backends(tmp, names)
    lb: Optional[Process] = None
    try:
        backends.start_all()
        lb, (listen, _) = start_twistd_powerlb(tmp, [backends.ports[name] for name in names], *LB_OPTIONS)
        for name, mode in faults.items():
            backends.set_mode(name, mode)
        t0 = time.monotonic()
        return [send(listen, f"r{number}", method, t0) for number, method in enumerate(requests)]
    finally:
        if lb is not None:
            lb.stop()
        backends.stop_all()


def test_get_survives_a_hung_backend(tmp_path: Path) -> None:
    results = one_by_one(tmp_path, ("a", "b"), {"b": "hang"}, ["GET"] * 4)
    assert [(r.kind, r.backend) for r in results] == [("ok", "a")] * 4, describe(results)


def test_get_survives_a_reset_mid_response(tmp_path: Path) -> None:
    results = one_by_one(tmp_path, ("a", "b"), {"b": "reset"}, ["GET"] * 4)
    assert [(r.kind, r.backend) for r in results] == [("ok", "a")] * 4, describe(results)


def test_post_cut_mid_response_gets_a_clean_502(tmp_path: Path) -> None:
    (result,) = one_by_one(tmp_path, ("a",), {"a": "reset"}, ["POST"])
    assert result.kind == "status-502", describe([result])
