"""Tests for powerlb.outlier: the pure detector, a reference model, and the ejector on a fake clock."""

from __future__ import annotations

from typing import List, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent

from powerlb.backend import Backend
from powerlb.balancing import make_balancer
from powerlb.outlier import OutlierDetector, OutlierEjector
from tests.support.backends import make_backend


def fail_times(detector: OutlierDetector, backend: Backend, now: float, count: int) -> List[bool]:
    return [detector.record_failure(backend, now) for _ in range(count)]


# --- OutlierDetector -----------------------------------------------------------------


def test_ejects_after_exactly_n_consecutive_failures() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=3, backoff=10)
    assert fail_times(detector, backend, 0.0, 3) == [False, False, True]
    assert detector.is_ejected(backend, 0.0)
    assert detector.ejected_until(backend) == 10.0
    assert detector.is_ejected(backend, 9.99)
    assert not detector.is_ejected(backend, 10.0)


def test_success_resets_the_streak() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=3, backoff=10)
    fail_times(detector, backend, 0.0, 2)
    detector.record_success(backend, 0.0)
    assert fail_times(detector, backend, 0.0, 3) == [False, False, True]


def test_backends_are_counted_separately() -> None:
    a, b = make_backend(1), make_backend(2)
    detector = OutlierDetector(failures=2, backoff=1)
    assert detector.record_failure(a, 0.0) is False
    assert detector.record_failure(b, 0.0) is False
    assert detector.record_failure(a, 0.0) is True
    assert not detector.is_ejected(b, 0.0)


def test_unknown_backend_is_not_ejected() -> None:
    detector = OutlierDetector()
    assert not detector.is_ejected(make_backend(), 0.0)
    assert detector.ejected_until(make_backend()) == 0.0
    assert detector.readmit(make_backend(), 0.0) is False


def test_zero_failures_turns_detection_off() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=0)
    assert not any(fail_times(detector, backend, 0.0, 100))
    assert not detector.is_ejected(backend, 0.0)


def test_outcomes_while_ejected_are_ignored() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=2, backoff=10)
    fail_times(detector, backend, 0.0, 2)
    assert fail_times(detector, backend, 5.0, 5) == [False] * 5
    detector.record_success(backend, 5.0)  # a request sent before the ejection
    assert detector.ejected_until(backend) == 10.0
    # still half-open after the back-off: the success above did not count
    assert detector.record_failure(backend, 10.0) is True


def test_half_open_one_failure_ejects_again_for_twice_as_long() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=3, backoff=10)
    fail_times(detector, backend, 0.0, 3)
    assert detector.record_failure(backend, 10.0) is True
    assert detector.ejected_until(backend) == 30.0
    assert detector.record_failure(backend, 30.0) is True
    assert detector.ejected_until(backend) == 70.0


def test_half_open_success_closes_and_resets_the_back_off() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=3, backoff=10)
    fail_times(detector, backend, 0.0, 3)
    assert detector.record_failure(backend, 10.0) is True  # 20 s
    detector.record_success(backend, 30.0)
    assert fail_times(detector, backend, 30.0, 3) == [False, False, True]
    assert detector.ejected_until(backend) == 40.0


def test_back_off_doubles_up_to_the_cap() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=1, backoff=1, max_factor=32)
    now, lengths = 0.0, []
    for _ in range(9):
        assert detector.record_failure(backend, now) is True
        lengths.append(detector.ejected_until(backend) - now)
        now = detector.ejected_until(backend)
    assert lengths == [1, 2, 4, 8, 16, 32, 32, 32, 32]


def test_readmit_ends_the_ejection_early_into_half_open() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=2, backoff=10)
    fail_times(detector, backend, 0.0, 2)
    assert detector.readmit(backend, 3.0) is True
    assert not detector.is_ejected(backend, 3.0)
    assert detector.readmit(backend, 3.0) is False
    assert detector.record_failure(backend, 4.0) is True  # half-open, back-off doubled
    assert detector.ejected_until(backend) == 24.0


@pytest.mark.parametrize(
    ("failures", "backoff", "max_factor"), [(-1, 10.0, 32), (5, 0.0, 32), (5, -1.0, 32), (5, 10.0, 0)]
)
def test_rejects_bad_settings(failures: int, backoff: float, max_factor: int) -> None:
    with pytest.raises(ValueError, match="need failures >= 0"):
        OutlierDetector(failures, backoff, max_factor)


class ReferenceDetector:
    """The rules spelled out naively, for one backend."""

    def __init__(self, failures: int, backoff: float, max_factor: int) -> None:
        self.failures, self.backoff, self.max_factor = failures, backoff, max_factor
        self.streak = 0
        self.ejections_unrecovered = 0
        self.until = 0.0

    def failure(self, now: float) -> bool:
        if self.failures == 0 or now < self.until:
            return False
        self.streak += 1
        if self.ejections_unrecovered == 0 and self.streak < self.failures:
            return False
        factor = min(2**self.ejections_unrecovered, self.max_factor)
        self.until = now + self.backoff * factor
        self.ejections_unrecovered += 1
        self.streak = 0
        return True

    def success(self, now: float) -> None:
        if now >= self.until:
            self.streak = 0
            self.ejections_unrecovered = 0


@settings(max_examples=200, deadline=None)
@given(
    failures=st.integers(min_value=0, max_value=5),
    max_factor=st.integers(min_value=1, max_value=64),
    events=st.lists(st.tuples(st.sampled_from("+-"), st.integers(min_value=0, max_value=30)), max_size=60),
)
def test_matches_reference_model(failures: int, max_factor: int, events: List[Tuple[str, int]]) -> None:
    backend = make_backend()
    detector = OutlierDetector(failures, 4.0, max_factor)
    model = ReferenceDetector(failures, 4.0, max_factor)
    now = 0.0
    for outcome, step in events:
        now += step / 2
        if outcome == "+":
            detector.record_success(backend, now)
            model.success(now)
        else:
            assert detector.record_failure(backend, now) == model.failure(now)
        assert detector.is_ejected(backend, now) == (now < model.until)


# --- OutlierEjector ------------------------------------------------------------------


class Ejector:
    """An OutlierEjector on a fake clock, recording its log and re-admissions."""

    def __init__(self, failures: int = 3, backoff: float = 10.0, **kwargs: int) -> None:
        self.clock = Clock()
        self.readmitted: List[Backend] = []
        self.ejector = OutlierEjector(
            self.clock, failures, backoff, on_readmit=self.readmitted.append, **kwargs
        )
        self.events: List[dict] = []
        self.ejector.log = Logger(observer=self.events.append)
        self.ejector.startService()

    def log(self) -> List[Tuple[LogLevel, str]]:
        return [(e["log_level"], formatEvent(e)) for e in self.events]


def test_ejector_ejects_and_readmits_after_the_back_off() -> None:
    t = Ejector(failures=3, backoff=10)
    backend = make_backend()
    for _ in range(2):
        t.ejector.failure(backend)
    assert not backend.ejected
    t.ejector.failure(backend)
    assert backend.ejected and backend.ejections == 1
    t.clock.advance(9.9)
    assert backend.ejected and t.readmitted == []
    t.clock.advance(0.1)
    assert not backend.ejected
    assert t.readmitted == [backend]
    assert t.clock.getDelayedCalls() == []
    assert t.log() == [
        (
            LogLevel.warn,
            "backend http://127.0.0.1:9001 ejected for 10s: its requests keep failing (ejection 1)",
        ),
        (LogLevel.info, "backend http://127.0.0.1:9001 re-admitted: its back-off is over"),
    ]


def test_ejector_balancer_skips_the_ejected_backend() -> None:
    t = Ejector(failures=1, backoff=5)
    a, b = make_backend(1), make_backend(2)
    balancer = make_balancer("round-robin", [a, b])
    t.ejector.failure(a)
    assert {balancer.pick() for _ in range(4)} == {b}
    t.clock.advance(5)
    assert {balancer.pick() for _ in range(4)} == {a, b}


def test_ejector_success_resets_the_streak() -> None:
    t = Ejector(failures=2)
    backend = make_backend()
    t.ejector.failure(backend)
    t.ejector.success(backend)
    t.ejector.failure(backend)
    assert not backend.ejected


def test_ejector_half_open_failure_doubles_and_counts() -> None:
    t = Ejector(failures=3, backoff=10)
    backend = make_backend()
    for _ in range(3):
        t.ejector.failure(backend)
    t.clock.advance(10)
    t.ejector.failure(backend)  # half-open: one failure is enough
    assert backend.ejected and backend.ejections == 2
    t.clock.advance(19.9)
    assert backend.ejected
    t.clock.advance(0.1)
    assert not backend.ejected
    t.ejector.success(backend)
    t.ejector.failure(backend)
    assert not backend.ejected  # recovered: the full streak is needed again
    assert "ejected for 20s" in t.log()[2][1]


def test_ejector_outcomes_while_ejected_are_ignored() -> None:
    t = Ejector(failures=1, backoff=10)
    backend = make_backend()
    t.ejector.failure(backend)
    t.ejector.failure(backend)
    t.ejector.success(backend)
    assert backend.ejections == 1
    assert len(t.clock.getDelayedCalls()) == 1


def test_ejector_ignores_outcomes_until_its_timer_has_run() -> None:
    t = Ejector(failures=1, backoff=10)
    backend = make_backend()
    t.ejector.failure(backend)
    # The back-off is over but the reactor handles I/O before the timer: no second ejection.
    t.clock.rightNow = 10.0
    t.ejector.failure(backend)
    t.ejector.success(backend)
    assert backend.ejections == 1
    t.clock.advance(0)
    assert not backend.ejected
    t.ejector.failure(backend)  # half-open: the success before the timer did not count
    assert backend.ejections == 2


def test_ejector_health_pass_readmits_early() -> None:
    t = Ejector(failures=1, backoff=10)
    a, b = make_backend(1), make_backend(2)
    t.ejector.failure(a)
    t.ejector.health_passed(b)  # not ejected: nothing happens
    t.clock.advance(3)
    t.ejector.health_passed(a)
    assert not a.ejected
    assert t.readmitted == [a]
    assert t.clock.getDelayedCalls() == []
    assert t.log()[-1] == (LogLevel.info, "backend http://127.0.0.1:1 re-admitted: a health check passed")
    t.ejector.failure(a)  # half-open
    assert a.ejected and t.clock.getDelayedCalls()[0].getTime() == 23.0


def test_ejector_off_never_ejects() -> None:
    t = Ejector(failures=0)
    backend = make_backend()
    for _ in range(50):
        t.ejector.failure(backend)
    assert not backend.ejected and t.clock.getDelayedCalls() == []


def test_ejector_stop_cancels_timers_and_readmits() -> None:
    t = Ejector(failures=1, backoff=10)
    a, b = make_backend(1), make_backend(2)
    t.ejector.failure(a)
    t.ejector.failure(b)
    t.ejector.stopService()
    assert t.clock.getDelayedCalls() == []
    assert not a.ejected and not b.ejected
    assert t.readmitted == []
    t.ejector.startService()
    t.ejector.failure(a)  # half-open: the stop did not make it recover
    assert a.ejected and a.ejections == 2


def test_ejector_without_readmit_callback() -> None:
    clock = Clock()
    ejector = OutlierEjector(clock, failures=1, backoff=1)
    ejector.log = Logger(observer=lambda event: None)
    backend = make_backend()
    ejector.failure(backend)
    clock.advance(1)
    assert not backend.ejected


@settings(max_examples=100, deadline=None)
@given(
    events=st.lists(st.tuples(st.sampled_from("+-h"), st.integers(min_value=0, max_value=40)), max_size=50),
    failures=st.integers(min_value=1, max_value=4),
)
def test_ejector_flag_agrees_with_detector(events: List[Tuple[str, int]], failures: int) -> None:
    """``Backend.ejected`` always mirrors the detector, and every ejection gets exactly one re-admission."""
    t = Ejector(failures=failures, backoff=2.0)
    backend = make_backend()
    for outcome, step in events:
        t.clock.advance(step / 4)
        if outcome == "+":
            t.ejector.success(backend)
        elif outcome == "-":
            t.ejector.failure(backend)
        else:
            t.ejector.health_passed(backend)
        now = t.clock.seconds()
        assert backend.ejected == t.ejector.detector.is_ejected(backend, now)
        assert len(t.clock.getDelayedCalls()) == int(backend.ejected)
    assert backend.ejections == len(t.readmitted) + int(backend.ejected)
