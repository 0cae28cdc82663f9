"""Tests for powerlb.health: rise/fall hysteresis and the HealthChecker service on a fake clock, what a
check probes (TCP connect, HTTP GET, none), and health checks over real sockets."""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import defer, error, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent

from powerlb.backend import Backend, BackendSpec
from powerlb.balancing import make_balancer
from powerlb.health import (
    CheckKind,
    HealthChecker,
    HealthState,
    SlowStart,
    connect_probe,
    is_healthy_status,
    passes,
    ramp_weight,
)
from tests.support.backends import make_backend
from tests.support.inproc import answer, sleep, wait_for

# --- HealthState ---------------------------------------------------------------------


def feed(state: HealthState, outcomes: str) -> List[Optional[bool]]:
    """Record a string of outcomes ("+" pass, "-" fail); return what each call returned."""
    return [state.record(char == "+") for char in outcomes]


def test_goes_down_after_exactly_fall_failures() -> None:
    state = HealthState(rise=2, fall=3)
    assert feed(state, "---") == [None, None, False]
    assert state.healthy is False


def test_comes_up_after_exactly_rise_passes() -> None:
    state = HealthState(rise=2, fall=3, healthy=False)
    assert feed(state, "++") == [None, True]
    assert state.healthy is True


def test_pass_while_up_resets_failure_streak() -> None:
    state = HealthState(rise=2, fall=3)
    assert feed(state, "--+--") == [None] * 5
    assert state.healthy is True
    assert feed(state, "-") == [False]


def test_failure_while_down_resets_pass_streak() -> None:
    state = HealthState(rise=3, fall=1, healthy=False)
    assert feed(state, "++-++") == [None] * 5
    assert state.healthy is False
    assert feed(state, "+") == [True]


def test_streak_restarts_after_a_flip() -> None:
    state = HealthState(rise=2, fall=2)
    assert feed(state, "--") == [None, False]
    assert feed(state, "-") == [None]  # failures while down change nothing
    assert feed(state, "+-") == [None, None]
    assert feed(state, "++") == [None, True]
    assert feed(state, "+-") == [None, None]
    assert feed(state, "-") == [False]


def test_agreeing_outcomes_never_flip() -> None:
    up = HealthState()
    assert feed(up, "+" * 10) == [None] * 10
    down = HealthState(healthy=False)
    assert feed(down, "-" * 10) == [None] * 10


def test_rise_and_fall_of_one_flip_immediately() -> None:
    state = HealthState(rise=1, fall=1)
    assert feed(state, "-+-+") == [False, True, False, True]


def test_defaults() -> None:
    state = HealthState()
    assert (state.rise, state.fall, state.healthy) == (2, 3, True)


@pytest.mark.parametrize(("rise", "fall"), [(0, 3), (2, 0), (-1, -1)])
def test_rejects_thresholds_below_one(rise: int, fall: int) -> None:
    with pytest.raises(ValueError):
        HealthState(rise=rise, fall=fall)


class ReferenceState:
    """A deliberately naive model: flip when the last N outcomes all disagree with the state."""

    def __init__(self, rise: int, fall: int, healthy: bool) -> None:
        self.rise, self.fall, self.healthy = rise, fall, healthy
        self.since_flip: List[bool] = []

    def record(self, ok: bool) -> Optional[bool]:
        self.since_flip.append(ok)
        need = self.fall if self.healthy else self.rise
        tail = self.since_flip[-need:]
        if len(tail) == need and all(o != self.healthy for o in tail):
            self.healthy = not self.healthy
            self.since_flip = []
            return self.healthy
        return None


@settings(max_examples=200, deadline=None)
@given(
    rise=st.integers(min_value=1, max_value=5),
    fall=st.integers(min_value=1, max_value=5),
    healthy=st.booleans(),
    outcomes=st.lists(st.booleans(), max_size=60),
)
def test_matches_reference_model(rise: int, fall: int, healthy: bool, outcomes: List[bool]) -> None:
    state = HealthState(rise, fall, healthy)
    model = ReferenceState(rise, fall, healthy)
    for ok in outcomes:
        assert state.record(ok) == model.record(ok)
        assert state.healthy == model.healthy


@pytest.mark.parametrize(
    ("status", "healthy"),
    [
        (100, False),
        (199, False),
        (200, True),
        (204, True),
        (301, True),
        (399, True),
        (400, False),
        (404, False),
        (500, False),
        (503, False),
    ],
)
def test_is_healthy_status(status: int, healthy: bool) -> None:
    assert is_healthy_status(status) is healthy


# --- HealthChecker -------------------------------------------------------------------

INTERVAL = 10.0
TIMEOUT = 3.0


class FakeProbes:
    """A probe function handing out one controllable Deferred per call."""

    def __init__(self) -> None:
        self.calls: List[Backend] = []
        self.pending: Dict[str, List[Deferred[int]]] = {}
        self.cancelled = 0
        self.raise_for: Optional[Backend] = None

    def __call__(self, backend: Backend) -> Deferred[int]:
        self.calls.append(backend)
        if backend is self.raise_for:
            raise RuntimeError("probe exploded")
        d: Deferred[int] = Deferred(self._cancel)
        self.pending.setdefault(backend.url, []).append(d)
        return d

    def _cancel(self, d: Deferred[int]) -> None:
        self.cancelled += 1

    def take(self, backend: Backend) -> Deferred[int]:
        """The oldest unanswered probe of ``backend``."""
        return self.pending[backend.url].pop(0)

    def answer_all(self, status: int) -> None:
        for queue in self.pending.values():
            while queue:
                queue.pop(0).callback(status)


def make_backends(count: int) -> List[Backend]:
    return [make_backend(9001 + i) for i in range(count)]


def make_checker(backends: List[Backend], probes: FakeProbes, clock: Clock, **kwargs: Any) -> HealthChecker:
    return HealthChecker(backends, probes, clock, INTERVAL, TIMEOUT, **kwargs)


def test_first_round_is_immediate_and_concurrent() -> None:
    backends = make_backends(3)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock)
    checker.startService()
    # every probe of the round started before any has answered
    assert probes.calls == backends
    assert all(len(probes.pending[b.url]) == 1 for b in backends)
    checker.stopService()


def test_rounds_repeat_every_interval() -> None:
    backends = make_backends(2)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock)
    checker.startService()
    probes.answer_all(200)
    clock.advance(INTERVAL - 0.5)
    assert len(probes.calls) == 2
    clock.advance(0.5)
    assert len(probes.calls) == 4
    checker.stopService()


def run_rounds(probes: FakeProbes, clock: Clock, status: int, rounds: int) -> None:
    """Answer the current round with ``status`` and let ``rounds - 1`` more run likewise."""
    for index in range(rounds):
        if index:
            clock.advance(INTERVAL)
        probes.answer_all(status)


def test_down_after_exactly_fall_rounds_and_up_after_rise() -> None:
    backends = make_backends(2)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock, rise=2, fall=3)
    checker.startService()
    run_rounds(probes, clock, 503, 2)
    assert [b.healthy for b in backends] == [True, True]
    clock.advance(INTERVAL)
    run_rounds(probes, clock, 503, 1)
    assert [b.healthy for b in backends] == [False, False]
    clock.advance(INTERVAL)
    run_rounds(probes, clock, 200, 1)
    assert [b.healthy for b in backends] == [False, False]
    clock.advance(INTERVAL)
    run_rounds(probes, clock, 302, 1)
    assert [b.healthy for b in backends] == [True, True]
    checker.stopService()


def test_each_backend_has_its_own_state() -> None:
    good, bad = make_backends(2)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker([good, bad], probes, clock, fall=1)
    checker.startService()
    probes.take(good).callback(200)
    probes.take(bad).errback(error.ConnectionRefusedError())
    assert good.healthy is True
    assert bad.healthy is False
    assert checker.last_result(good) == "200"
    assert checker.last_result(bad) == "ConnectionRefusedError"
    checker.stopService()


def test_disabled_backends_are_not_probed_and_keep_their_health() -> None:
    a, b = make_backends(2)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker([a, b], probes, clock, fall=1)
    checker.startService()
    probes.answer_all(200)
    b.set_state("disabled")
    clock.advance(INTERVAL)
    assert probes.calls == [a, b, a]
    probes.answer_all(503)
    assert (a.healthy, b.healthy, checker.last_result(b)) == (False, True, "200")
    b.set_state("draining")  # draining backends are still checked
    clock.advance(INTERVAL)
    assert probes.calls[3:] == [a, b]
    probes.answer_all(503)
    assert (b.healthy, checker.last_result(b)) == (False, "503")
    checker.stopService()


def test_last_result_is_none_before_any_check() -> None:
    backends = make_backends(1)
    checker = make_checker(backends, FakeProbes(), Clock())
    assert checker.last_result(backends[0]) is None


def test_timeout_counts_as_failure() -> None:
    backends = make_backends(1)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock, fall=1)
    checker.startService()
    clock.advance(TIMEOUT - 0.1)
    assert backends[0].healthy is True
    clock.advance(0.1)
    assert backends[0].healthy is False
    assert checker.last_result(backends[0]) == "timeout"
    assert probes.cancelled == 1
    checker.stopService()


def test_timeouts_need_fall_rounds_and_keep_the_loop_going() -> None:
    backends = make_backends(1)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock, fall=3)
    checker.startService()
    health = []
    for _ in range(4):
        clock.advance(TIMEOUT)
        health.append(backends[0].healthy)
        clock.advance(INTERVAL - TIMEOUT)
    assert health == [True, True, False, False]
    assert len(probes.calls) == 5
    checker.stopService()


def test_synchronous_raise_is_a_failure_and_loop_continues() -> None:
    exploding, fine = make_backends(2)
    probes, clock = FakeProbes(), Clock()
    probes.raise_for = exploding
    checker = make_checker([exploding, fine], probes, clock, fall=2)
    checker.startService()
    assert checker.last_result(exploding) == "RuntimeError"
    probes.answer_all(200)
    assert exploding.healthy is True
    clock.advance(INTERVAL)
    assert exploding.healthy is False
    assert fine.healthy is True
    probes.answer_all(200)
    clock.advance(INTERVAL)
    assert probes.calls.count(exploding) == 3
    assert probes.calls.count(fine) == 3
    checker.stopService()


def test_errback_is_a_failure_and_loop_continues() -> None:
    backends = make_backends(1)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock, fall=2)
    checker.startService()
    probes.take(backends[0]).errback(ValueError("bad response"))
    clock.advance(INTERVAL)
    probes.take(backends[0]).errback(ValueError("bad response"))
    assert backends[0].healthy is False
    assert checker.last_result(backends[0]) == "ValueError"
    clock.advance(INTERVAL)
    assert len(probes.calls) == 3
    checker.stopService()


def test_round_in_progress_blocks_the_next_one() -> None:
    backends = make_backends(2)
    probes, clock = FakeProbes(), Clock()
    checker = HealthChecker(backends, probes, clock, interval=1.0, timeout=5.0)
    checker.startService()
    probes.take(backends[0]).callback(200)
    clock.advance(1.0)
    clock.advance(1.0)
    assert len(probes.calls) == 2  # backends[1] still pending: no second round
    probes.take(backends[1]).callback(200)
    assert len(probes.calls) == 2
    clock.advance(1.0)
    assert len(probes.calls) == 4
    checker.stopService()


def test_check_all_waits_for_every_probe_and_never_fails() -> None:
    backends = make_backends(3)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock)
    done: List[object] = []
    checker.check_all().addBoth(done.append)
    probes.take(backends[0]).callback(200)
    probes.take(backends[1]).errback(error.ConnectionRefusedError())
    assert done == []
    clock.advance(TIMEOUT)
    assert done == [None]


def test_check_all_with_no_backends_fires_at_once() -> None:
    checker = make_checker([], FakeProbes(), Clock())
    done: List[object] = []
    checker.check_all().addBoth(done.append)
    assert done == [None]


def test_stop_cancels_pending_probes_and_stops_loop() -> None:
    backends = make_backends(2)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock, fall=1)
    checker.startService()
    checker.stopService()
    assert probes.cancelled == 2
    assert checker.running == 0
    # a cancelled probe is not a failed check
    assert [b.healthy for b in backends] == [True, True]
    assert checker.last_result(backends[0]) is None
    assert clock.getDelayedCalls() == []
    clock.advance(10 * INTERVAL)
    assert len(probes.calls) == 2


def test_stop_between_rounds() -> None:
    backends = make_backends(1)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock)
    checker.startService()
    probes.answer_all(200)
    checker.stopService()
    assert probes.cancelled == 0
    assert clock.getDelayedCalls() == []


def test_restart_after_stop() -> None:
    backends = make_backends(1)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker(backends, probes, clock)
    checker.startService()
    checker.stopService()
    checker.startService()
    assert len(probes.calls) == 2
    checker.stopService()


def test_set_backends_keeps_state_of_remaining() -> None:
    a, b, c = make_backends(3)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker([a, b], probes, clock, fall=2)
    checker.startService()
    probes.answer_all(500)  # one failure each
    c.healthy = False
    checker.set_backends([a, c])
    assert c.healthy is True  # new backends start healthy
    assert checker.last_result(a) == "500"
    assert checker.last_result(b) is None
    clock.advance(INTERVAL)
    assert probes.calls[-2:] == [a, c]
    probes.answer_all(500)
    assert a.healthy is False  # second failure in a row: the streak was kept
    assert c.healthy is True
    checker.stopService()


def test_probe_of_removed_backend_is_ignored() -> None:
    a, b = make_backends(2)
    probes, clock = FakeProbes(), Clock()
    checker = make_checker([a, b], probes, clock, fall=1)
    checker.startService()
    checker.set_backends([a])
    probes.take(b).callback(500)
    assert b.healthy is True
    assert checker.last_result(b) is None
    probes.take(a).callback(200)
    checker.stopService()


def test_transitions_are_logged() -> None:
    backend = make_backends(1)[0]
    probes, clock = FakeProbes(), Clock()
    checker = make_checker([backend], probes, clock, rise=2, fall=3)
    events: List[dict] = []
    checker.log = Logger(observer=events.append)
    checker.startService()
    probes.take(backend).errback(error.ConnectionRefusedError())
    for _ in range(2):
        clock.advance(INTERVAL)
        probes.take(backend).errback(error.ConnectionRefusedError())
    for _ in range(2):
        clock.advance(INTERVAL)
        probes.answer_all(200)
    checker.stopService()
    assert [(e["log_level"], formatEvent(e)) for e in events] == [
        (
            LogLevel.warn,
            "backend http://127.0.0.1:9001 is DOWN after 3 failed checks (last: ConnectionRefusedError, "
            "TCP connect); a check passes when a connection opens within health-timeout; "
            "set health-path for HTTP checks, or health-check: off",
        ),
        (LogLevel.info, "backend http://127.0.0.1:9001 is UP after 2 passed checks"),
    ]


def test_result_neither_status_nor_connection_is_a_failure() -> None:
    backend = make_backends(1)[0]
    clock = Clock()
    checker = HealthChecker(
        [backend],
        lambda _backend: succeed("200"),
        clock,
        INTERVAL,
        TIMEOUT,
        fall=1,
    )
    done: List[object] = []
    checker.check_all().addBoth(done.append)
    assert done == [None]
    assert backend.healthy is False


def test_on_pass_is_called_for_every_passed_check_and_on_up_on_recovery() -> None:
    a, b = make_backends(2)
    probes, clock = FakeProbes(), Clock()
    passed: List[Backend] = []
    up: List[Backend] = []
    checker = make_checker([a, b], probes, clock, rise=2, fall=1, on_pass=passed.append, on_up=up.append)
    checker.log = Logger(observer=lambda event: None)
    checker.startService()
    probes.take(a).callback(200)
    probes.take(b).callback(500)  # b goes down
    assert (passed, up) == ([a], [])
    clock.advance(INTERVAL)
    probes.take(a).callback(200)
    probes.take(b).callback(200)  # first pass of two
    assert (passed, up) == ([a, a, b], [])
    clock.advance(INTERVAL)
    probes.answer_all(204)
    assert (passed, up) == ([a, a, b, a, b], [b])
    checker.stopService()


# --- slow start ----------------------------------------------------------------------


def test_ramp_weight_endpoints_and_midpoint() -> None:
    assert ramp_weight(48, 0.0, 30.0) == 1
    assert ramp_weight(48, -1.0, 30.0) == 1
    assert ramp_weight(48, 15.0, 30.0) == 24  # 1 + 47 / 2, rounded down
    assert ramp_weight(48, 29.999, 30.0) == 47
    assert ramp_weight(48, 30.0, 30.0) == 48
    assert ramp_weight(48, 99.0, 30.0) == 48
    assert ramp_weight(16, 0.0, 0.0) == 16


@settings(max_examples=300, deadline=None)
@given(
    full=st.integers(min_value=1, max_value=10**6),
    duration=st.floats(min_value=0.001, max_value=1e4),
    first=st.floats(min_value=-10.0, max_value=2e4),
    second=st.floats(min_value=-10.0, max_value=2e4),
)
def test_ramp_weight_is_monotone_bounded_and_linear(
    full: int, duration: float, first: float, second: float
) -> None:
    low, high = sorted((first, second))
    assert 1 <= ramp_weight(full, low, duration) <= ramp_weight(full, high, duration) <= full
    value = ramp_weight(full, high, duration)
    assert (value == full) == (high >= duration or full == 1)
    if 0 <= high < duration:
        assert abs(value - (1 + (full - 1) * high / duration)) < 1


class Ramp:
    """A SlowStart on a fake clock."""

    def __init__(self, duration: float = 10.0) -> None:
        self.clock = Clock()
        self.slow_start = SlowStart(self.clock, duration)
        self.slow_start.startService()

    def weights_over(self, backend: Backend, ticks: int, step: float = 1.0) -> List[int]:
        out = []
        for _ in range(ticks):
            self.clock.advance(step)
            out.append(backend.effective_weight)
        return out


def test_slow_start_ramps_from_one_to_full_weight_in_steps() -> None:
    backend = make_backend(weight=3)
    t = Ramp(duration=10.0)
    t.slow_start.begin(backend)
    assert backend.effective_weight == 1
    # ticks every duration / 10 = 1 s; the full weight is 3 * 16 = 48
    assert t.weights_over(backend, 11) == [5, 10, 15, 19, 24, 29, 33, 38, 43, 48, 48]
    assert t.clock.getDelayedCalls() == []  # the loop stops once no backend ramps


def test_slow_start_off_leaves_weights_alone() -> None:
    backend = make_backends(1)[0]
    t = Ramp(duration=0.0)
    t.slow_start.begin(backend)
    assert backend.effective_weight == backend.full_weight
    assert t.clock.getDelayedCalls() == []


def test_slow_start_begin_again_restarts_the_ramp() -> None:
    backend = make_backends(1)[0]  # full weight 16
    t = Ramp(duration=10.0)
    t.slow_start.begin(backend)
    assert t.weights_over(backend, 5) == [2, 4, 5, 7, 8]
    t.slow_start.begin(backend)
    assert backend.effective_weight == 1
    assert len(t.clock.getDelayedCalls()) == 1  # still one loop
    assert t.weights_over(backend, 10) == [2, 4, 5, 7, 8, 10, 11, 13, 14, 16]
    assert t.clock.getDelayedCalls() == []


def test_slow_start_backends_ramp_independently() -> None:
    a, b = make_backends(2)
    t = Ramp(duration=4.0)  # ticks every 0.4 s
    t.slow_start.begin(a)
    t.clock.advance(2.0)
    t.slow_start.begin(b)
    t.clock.advance(2.0)
    assert a.effective_weight == 16
    assert b.effective_weight == ramp_weight(16, 2.0, 4.0) == 8
    t.clock.advance(2.4)
    assert b.effective_weight == 16
    assert t.clock.getDelayedCalls() == []


def test_slow_start_stop_gives_full_weight_and_stops_the_loop() -> None:
    a, b = make_backends(2)
    t = Ramp(duration=10.0)
    t.slow_start.begin(a)
    t.slow_start.begin(b)
    t.clock.advance(3)
    t.slow_start.stopService()
    assert (a.effective_weight, b.effective_weight) == (16, 16)
    assert t.clock.getDelayedCalls() == []
    t.slow_start.startService()
    t.slow_start.begin(a)  # usable again after a restart
    assert a.effective_weight == 1
    assert len(t.clock.getDelayedCalls()) == 1


def test_slow_start_shifts_a_weighted_balancer_gradually() -> None:
    a, b = make_backends(2)
    balancer = make_balancer("weighted-round-robin", [a, b])
    t = Ramp(duration=10.0)
    t.slow_start.begin(a)
    shares = []
    for _ in range(11):
        picks = [balancer.pick() for _ in range(320)]
        shares.append(picks.count(a))
        t.clock.advance(1)
    assert shares[0] in (18, 19)  # weight 1 against 16: 320 / 17
    assert shares == sorted(shares)
    assert shares[-1] == 160


@pytest.mark.parametrize(("duration", "steps"), [(-1.0, 10), (10.0, 0)])
def test_slow_start_rejects_bad_settings(duration: float, steps: int) -> None:
    with pytest.raises(ValueError, match="need duration >= 0"):
        SlowStart(Clock(), duration, steps)


# --- what a check probes ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "ok"),
    [(None, True), (200, True), (302, True), (404, False), (503, False), ("200", False), (b"", False)],
)
def test_passes(result: Any, ok: bool) -> None:
    """A connection made (None, a TCP check) or a 2xx/3xx status passes; anything else fails."""
    assert passes(result) is ok


@pytest.mark.parametrize(
    ("enabled", "path", "what", "hint"),
    [
        (True, None, "TCP connect", "set health-path for HTTP checks, or health-check: off"),
        (True, "/health", "GET /health", "set health-path to a path the backend serves"),
        (False, "/health", "no check", "health-check is off"),
        (False, None, "no check", "health-check is off"),
    ],
)
def test_check_kind(enabled: bool, path: Optional[str], what: str, hint: str) -> None:
    kind = CheckKind(enabled, path)
    assert (kind.enabled, kind.path, kind.what) == (enabled, path if enabled else None, what)
    assert hint in kind.hint


def test_http_check_down_line_names_the_path_and_the_fix() -> None:
    backend = make_backends(1)[0]
    probes, clock = FakeProbes(), Clock()
    checker = make_checker([backend], probes, clock, fall=1, kind=CheckKind(True, "/health"))
    events: List[dict] = []
    checker.log = Logger(observer=events.append)
    checker.startService()
    probes.answer_all(404)
    checker.stopService()
    assert [formatEvent(e) for e in events] == [
        "backend http://127.0.0.1:9001 is DOWN after 1 failed checks (last: 404, GET /health); "
        "a check passes on a 2xx or 3xx answer within health-timeout; set health-path to a path "
        "the backend serves, leave it out for TCP connect checks, or health-check: off"
    ]


def test_no_probe_means_no_checks_and_backends_stay_up() -> None:
    backend = make_backends(1)[0]
    clock = Clock()
    checker = HealthChecker([backend], None, clock, INTERVAL, TIMEOUT, kind=CheckKind(False))
    checker.startService()
    assert clock.getDelayedCalls() == []
    done: List[object] = []
    checker.check_all().addBoth(done.append)
    assert done == [None]
    backend.healthy = False
    checker.set_backends([backend, *make_backends(2)[1:]])
    assert checker.last_result(backend) is None
    checker.stopService()


# --- over real sockets ----------------------------------------------------------------

#: Checks every 50 ms; a single failed one takes a backend down, a single pass brings it back.
FAST = {"health_interval": "50ms", "health_timeout": "500ms", "health_fall": 1, "health_rise": 1}


def no_health(backend: Any) -> None:
    """Make ``backend`` an ordinary application: it has no /health (404 there)."""
    backend.routes[b"/health"] = answer(404)


def log_of(checker: HealthChecker) -> List[str]:
    """Capture ``checker``'s log lines from now on."""
    lines: List[str] = []
    checker.log = Logger(observer=lambda event: lines.append(formatEvent(event)))
    return lines


@pytest_twisted.ensureDeferred
async def test_connect_probe_passes_on_a_listening_port_and_fails_on_a_closed_one(make_backends):
    (a,) = make_backends(1)
    backend = Backend(BackendSpec(a.url, "127.0.0.1", a.port_number))
    assert await connect_probe(reactor, backend, 5.0) is None
    assert a.connections == 1 and a.requests == []  # a connection, no request
    await a.stop()
    with pytest.raises(error.ConnectionRefusedError):
        await connect_probe(reactor, backend, 5.0)


@pytest_twisted.ensureDeferred
async def test_cancelled_connect_probe_is_a_cancellation(make_backends):
    """A probe cancelled by its timeout fails as cancelled (counted as "timeout"), nothing else."""
    (a,) = make_backends(1)
    probe = connect_probe(reactor, Backend(BackendSpec(a.url, "127.0.0.1", a.port_number)), 5.0)
    probe.cancel()
    with pytest.raises(defer.CancelledError):
        await probe


@pytest_twisted.ensureDeferred
async def test_app_without_health_path_stays_up_under_the_default_tcp_check(
    make_backends, start_powerlb, http
):
    (a,) = make_backends(1)
    no_health(a)
    lb = start_powerlb([a], **FAST)
    backend = lb.service.backends[0]
    await wait_for(lambda: backend.checks["pass"] >= 5)  # far more rounds than health-fall
    assert backend.healthy and backend.checks["fail"] == 0
    assert lb.service.health.last_result(backend) == "connected"
    assert a.requests == []  # a TCP check sends no request
    response = await http.get(lb.url + "/")
    assert response.code == 200
    await response.content()


@pytest_twisted.ensureDeferred
async def test_tcp_check_takes_a_closed_backend_down_says_so_and_brings_it_back(
    make_backends, start_powerlb, http
):
    a, b = make_backends(2)
    lb = start_powerlb([a, b], **FAST)
    lines = log_of(lb.service.health)
    gone = lb.service.backends[0]
    port = a.port_number
    await a.stop()
    await wait_for(lambda: not gone.healthy)
    # the error is a refused connection, or a reset when the port closed while a check connected
    assert re.fullmatch(
        re.escape(f"backend {a.url} is DOWN after 1 failed checks (last: ")
        + r"Connect\w*Error"
        + re.escape(
            ", TCP connect); a check passes when a connection opens within health-timeout; "
            "set health-path for HTTP checks, or health-check: off"
        ),
        lines[0],
    ), lines
    a.start(port)
    await wait_for(lambda: gone.healthy)
    assert lines[1] == f"backend {a.url} is UP after 1 passed checks"


@pytest_twisted.ensureDeferred
async def test_health_path_turns_on_http_checks(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    no_health(a)
    lb = start_powerlb([a], health_path="/health", **FAST)
    lines = log_of(lb.service.health)
    backend = lb.service.backends[0]
    await wait_for(lambda: not backend.healthy)
    assert lb.service.health.last_result(backend) == "404"
    assert any(r.uri == b"/health" for r in a.requests)
    assert lines[0].startswith(f"backend {a.url} is DOWN after 1 failed checks (last: 404, GET /health); ")
    assert "set health-path to a path the backend serves" in lines[0]
    response = await http.get(lb.url + "/")
    assert (response.code, await response.text()) == (503, "503 Service Unavailable: no healthy backend\n")
    a.routes[b"/health"] = lambda request: b"ok\n"
    await wait_for(lambda: backend.healthy)


@pytest_twisted.ensureDeferred
async def test_health_check_off_sends_no_probes_and_passive_detection_still_works(
    make_backends, start_powerlb, http
):
    a, b = make_backends(2)
    no_health(a)
    lb = start_powerlb(
        [a, b], health_check="off", health_path="/health", outlier_failures=2, outlier_backoff="60s", **FAST
    )
    await lb.service.health.check_all()
    await sleep(0.3)  # six check intervals
    assert (a.connections, b.connections) == (0, 0)
    backend_a = lb.service.backends[0]
    assert backend_a.healthy and backend_a.checks == {"pass": 0, "fail": 0}
    assert lb.service.stats()["backends"][0]["last_check"] is None
    await a.stop()
    for _ in range(4):  # each request to a is refused and retried on b
        response = await http.get(lb.url + "/")
        assert response.code == 200
        await response.content()
    assert backend_a.ejected and backend_a.ejections == 1
    assert backend_a.healthy  # no active check took it down
