"""Tests for powerlb.outlier: the pure detector and decisions (table, reference model, hypothesis), the
ejector on a fake clock, and passive health over real sockets."""

from __future__ import annotations

from collections import Counter
from typing import Any, List, Tuple

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import gatherResults
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, formatEvent

from powerlb.backend import Backend
from powerlb.balancing import make_balancer
from powerlb.outlier import (
    OutlierDetector,
    OutlierEjector,
    StatusRanges,
    ejection_allowed,
    format_statuses,
    parse_statuses,
    status_set,
)
from tests.support.backends import make_backend
from tests.support.inproc import answer, scrape


def fail(detector: OutlierDetector, backend: Backend, now: float) -> bool:
    """Record a failure and make the ejection it is due for (no cap here); True if it ejected."""
    due = detector.record_failure(backend, now)
    if due:
        detector.eject(backend, now)
    return due


def fail_times(detector: OutlierDetector, backend: Backend, now: float, count: int) -> List[bool]:
    return [fail(detector, backend, now) for _ in range(count)]


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
    assert fail(detector, a, 0.0) is False
    assert fail(detector, b, 0.0) is False
    assert fail(detector, a, 0.0) is True
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
    assert fail(detector, backend, 10.0) is True


def test_half_open_one_failure_ejects_again_for_twice_as_long() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=3, backoff=10)
    fail_times(detector, backend, 0.0, 3)
    assert fail(detector, backend, 10.0) is True
    assert detector.ejected_until(backend) == 30.0
    assert fail(detector, backend, 30.0) is True
    assert detector.ejected_until(backend) == 70.0


def test_half_open_success_closes_and_resets_the_back_off() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=3, backoff=10)
    fail_times(detector, backend, 0.0, 3)
    assert fail(detector, backend, 10.0) is True  # 20 s
    detector.record_success(backend, 30.0)
    assert fail_times(detector, backend, 30.0, 3) == [False, False, True]
    assert detector.ejected_until(backend) == 40.0


def test_back_off_doubles_up_to_the_cap() -> None:
    backend = make_backend()
    detector = OutlierDetector(failures=1, backoff=1, max_factor=32)
    now, lengths = 0.0, []
    for _ in range(9):
        assert fail(detector, backend, now) is True
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
    assert fail(detector, backend, 4.0) is True  # half-open, back-off doubled
    assert detector.ejected_until(backend) == 24.0


def test_due_but_not_ejected_stays_admitted_and_counts_again() -> None:
    """A refused ejection (the pool's cap) changes nothing but the streak, which starts over."""
    backend = make_backend()
    detector = OutlierDetector(failures=2, backoff=10)
    assert [detector.record_failure(backend, 0.0) for _ in range(4)] == [False, True, False, True]
    assert not detector.is_ejected(backend, 0.0)
    assert detector.eject(backend, 0.0) == 10.0  # the first ejection made: the back-off is not doubled


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
            assert fail(detector, backend, now) == model.failure(now)
        assert detector.is_ejected(backend, now) == (now < model.until)


# --- OutlierEjector ------------------------------------------------------------------


class Ejector:
    """An OutlierEjector on a fake clock over a pool, recording its log and re-admissions.

    The pool has a spare backend that never fails and ``max_ejection`` is 100 % unless given, so
    the ejection cap only binds in the tests about it.
    """

    def __init__(self, failures: int = 3, backoff: float = 10.0, **kwargs: Any) -> None:
        self.clock = Clock()
        self.readmitted: List[Backend] = []
        self.pool: List[Backend] = [make_backend(9999)]
        kwargs.setdefault("max_ejection", 100)
        self.ejector = OutlierEjector(
            self.clock, self.pool, failures, backoff, on_readmit=self.readmitted.append, **kwargs
        )
        self.events: List[dict] = []
        self.ejector.log = Logger(observer=self.events.append)
        self.ejector.startService()

    def backend(self, port: int = 9001) -> Backend:
        """A new backend of the pool."""
        backend = make_backend(port)
        self.pool.append(backend)
        return backend

    def log(self) -> List[Tuple[LogLevel, str]]:
        return [(e["log_level"], formatEvent(e)) for e in self.events]


def test_ejector_ejects_and_readmits_after_the_back_off() -> None:
    t = Ejector(failures=3, backoff=10)
    backend = t.backend()
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
    a, b = t.backend(1), t.backend(2)
    balancer = make_balancer("round-robin", [a, b])
    t.ejector.failure(a)
    assert {balancer.pick() for _ in range(4)} == {b}
    t.clock.advance(5)
    assert {balancer.pick() for _ in range(4)} == {a, b}


def test_ejector_success_resets_the_streak() -> None:
    t = Ejector(failures=2)
    backend = t.backend()
    t.ejector.failure(backend)
    t.ejector.success(backend)
    t.ejector.failure(backend)
    assert not backend.ejected


def test_ejector_half_open_failure_doubles_and_counts() -> None:
    t = Ejector(failures=3, backoff=10)
    backend = t.backend()
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
    backend = t.backend()
    t.ejector.failure(backend)
    t.ejector.failure(backend)
    t.ejector.success(backend)
    assert backend.ejections == 1
    assert len(t.clock.getDelayedCalls()) == 1


def test_ejector_ignores_outcomes_until_its_timer_has_run() -> None:
    t = Ejector(failures=1, backoff=10)
    backend = t.backend()
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
    a, b = t.backend(1), t.backend(2)
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
    backend = t.backend()
    for _ in range(50):
        t.ejector.failure(backend)
    assert not backend.ejected and t.clock.getDelayedCalls() == []


def test_ejector_stop_cancels_timers_and_readmits() -> None:
    t = Ejector(failures=1, backoff=10)
    a, b = t.backend(1), t.backend(2)
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
    backend, spare = make_backend(1), make_backend(2)
    ejector = OutlierEjector(clock, [backend, spare], failures=1, backoff=1)
    ejector.log = Logger(observer=lambda event: None)
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
    backend = t.backend()
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


def test_ejector_ejects_in_a_small_pool_only_while_another_backend_can_serve() -> None:
    """The cap: a one-backend pool is never emptied; refusals are counted and logged once per streak."""
    t = Ejector(failures=2, backoff=10, max_ejection=50)
    t.pool.clear()
    only = t.backend(1)
    for _ in range(10):
        t.ejector.failure(only)
    assert not only.ejected and only.ejections == 0
    assert t.ejector.counters.ejections_refused == 5  # every second failure was due for an ejection
    assert t.log() == [
        (
            LogLevel.warn,
            "backend http://127.0.0.1:1 not ejected although its requests keep failing: "
            "no other backend can take its requests",
        )
    ]
    t.ejector.success(only)
    t.ejector.failure(only)
    t.ejector.failure(only)
    assert len(t.log()) == 2  # logged again after a success


def test_ejector_never_ejects_more_than_max_ejection_of_the_pool() -> None:
    t = Ejector(failures=1, backoff=10, max_ejection=50)
    t.pool.clear()
    backends = [t.backend(port) for port in range(1, 6)]  # 5 backends, 50 %: 2 may be out
    for backend in backends:
        t.ejector.failure(backend)
    assert [b.ejected for b in backends] == [True, True, False, False, False]
    assert t.ejector.counters.ejections_refused == 3
    assert "outlier-max-ejection (50%) of the pool is out already" in t.log()[-1][1]
    t.clock.advance(10)  # the first two come back (half-open): room again
    t.ejector.failure(backends[2])
    assert backends[2].ejected


def test_ejector_counts_only_backends_that_can_serve_as_the_last_one() -> None:
    """A down, draining or disabled backend does not take requests: it cannot be the one left."""
    t = Ejector(failures=1, max_ejection=100)
    t.pool.clear()
    failing, down, draining = t.backend(1), t.backend(2), t.backend(3)
    down.healthy = False
    draining.set_state("draining")
    t.ejector.failure(failing)
    assert not failing.ejected
    draining.set_state("enabled")
    t.ejector.failure(failing)
    assert failing.ejected


def test_ejector_counts_gateway_statuses_only_by_default() -> None:
    t = Ejector(failures=1)
    backend = t.backend()
    for status in (500, 501, 505, 599, 404, 200, 429):
        t.ejector.response(backend, status)
    assert not backend.ejected
    t.ejector.response(backend, 503)
    assert backend.ejected


def test_ejector_counts_the_statuses_it_is_given() -> None:
    t = Ejector(failures=2, statuses=parse_statuses("500-599"))
    backend = t.backend()
    t.ejector.response(backend, 599)
    t.ejector.response(backend, 200)  # resets the streak
    t.ejector.response(backend, 500)
    assert not backend.ejected
    t.ejector.response(backend, 599)
    assert backend.ejected


def test_ejector_rejects_a_percentage_out_of_range() -> None:
    with pytest.raises(ValueError, match="percentage from 0 to 100"):
        OutlierEjector(Clock(), [], max_ejection=101)


# --- outlier-statuses and the ejection cap (pure) --------------------------------------


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        ("502-504", ((502, 504),)),
        ("500-599", ((500, 599),)),
        ("503", ((503, 503),)),
        (" 429 , 502 - 504 ", ((429, 429), (502, 504))),
        ("504,502,503", ((502, 504),)),  # adjacent statuses merge
        ("500-550,520-599", ((500, 599),)),  # overlapping ranges merge
        ("599,400", ((400, 400), (599, 599))),
        ("off", ()),
        ("OFF", ()),
    ],
)
def test_parse_statuses(text: str, ranges: StatusRanges) -> None:
    assert parse_statuses(text) == ranges


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "'' is not a status or a range of them; write e.g. 502-504 or 429,500-599"),
        ("5xx", "'5xx' is not a status or a range of them"),
        ("502-", "'502-' is not a status"),
        ("502,,503", "'' is not a status"),
        ("50", "'50' is not a status"),
        ("5000", "'5000' is not a status"),
        ("504-502", "'504-502' runs backwards; write the lower status first, e.g. 502-504"),
        ("399", "'399' is outside 400-599; only error statuses can count as failures"),
        ("500-600", "'500-600' is outside 400-599"),
        ("-502", "'-502' is not a status"),
    ],
)
def test_parse_statuses_rejects(text: str, reason: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_statuses(text)
    assert str(info.value).startswith(reason)


@pytest.mark.parametrize(
    ("ranges", "text"),
    [(((502, 504),), "502-504"), (((429, 429), (500, 599)), "429,500-599"), ((), "off")],
)
def test_format_statuses(ranges: StatusRanges, text: str) -> None:
    assert format_statuses(ranges) == text


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(400, 599), st.integers(0, 40)).map(lambda p: (p[0], min(p[0] + p[1], 599))),
        min_size=1,
        max_size=6,
    )
)
def test_statuses_parse_to_exactly_the_statuses_written(pairs: List[Tuple[int, int]]) -> None:
    """Any list of ranges parses to a normal form holding exactly their statuses, which reads back."""
    text = ",".join(f"{low}-{high}" if low != high else str(low) for low, high in pairs)
    ranges = parse_statuses(text)
    assert status_set(ranges) == {s for low, high in pairs for s in range(low, high + 1)}
    assert all(high + 1 < low for (_, high), (low, _) in zip(ranges, ranges[1:]))  # sorted, apart
    assert parse_statuses(format_statuses(ranges)) == ranges


@pytest.mark.parametrize(
    ("pool_size", "ejected", "others", "max_ejection", "allowed"),
    [
        (1, 0, 0, 100, False),  # the last backend that can serve
        (1, 0, 0, 50, False),
        (2, 0, 1, 50, True),
        (2, 1, 0, 50, False),
        (2, 0, 0, 100, False),  # the other one is down: still the last that can serve
        (3, 0, 2, 50, True),
        (3, 1, 1, 50, False),  # 2 of 3 is more than half
        (4, 1, 2, 50, True),
        (4, 2, 1, 50, False),
        (10, 0, 9, 10, True),
        (10, 1, 8, 10, False),
        (10, 0, 9, 0, False),  # 0 %: passive detection never ejects
        (5, 3, 1, 100, True),
    ],
)
def test_ejection_allowed(
    pool_size: int, ejected: int, others: int, max_ejection: int, allowed: bool
) -> None:
    assert ejection_allowed(pool_size, ejected, others, max_ejection) is allowed


@settings(max_examples=300, deadline=None)
@given(
    pool_size=st.integers(1, 50),
    max_ejection=st.integers(0, 100),
    data=st.data(),
)
def test_ejection_allowed_never_exceeds_the_cap_nor_empties_the_pool(
    pool_size: int, max_ejection: int, data: Any
) -> None:
    ejected = data.draw(st.integers(0, pool_size - 1))
    others = data.draw(st.integers(0, pool_size - ejected - 1))
    allowed = ejection_allowed(pool_size, ejected, others, max_ejection)
    naive = others >= 1 and (ejected + 1) / pool_size <= max_ejection / 100
    assert allowed is naive
    if allowed:
        assert ejected + 1 <= pool_size * max_ejection // 100 and others >= 1


# --- over real sockets ----------------------------------------------------------------


async def burst(http: Any, url: str, paths: List[str]) -> List[Any]:
    """GET every path at once through powerlb; the responses, each with its body read."""
    responses = await gatherResults([http.get(url + path) for path in paths])
    for response in responses:
        response.body = await response.content()
    return list(responses)


def app_with_buggy_endpoints(backend: Any) -> None:
    """``/500`` and ``/599`` answer those statuses (a buggy endpoint); ``/`` stays fine."""
    backend.routes[b"/500"] = answer(500)
    backend.routes[b"/599"] = answer(599)


@pytest_twisted.ensureDeferred
async def test_application_5xx_burst_leaves_a_one_backend_pool_serving(make_backends, start_powerlb, http):
    (a,) = make_backends(1)
    app_with_buggy_endpoints(a)
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1")
    responses = await burst(http, lb.url, ["/500", "/599"] * 100)
    assert Counter(r.code for r in responses) == {500: 100, 599: 100}
    assert not lb.service.backends[0].ejected
    assert (await http.get(lb.url + "/")).code == 200
    five99 = await http.get(lb.url + "/599")
    assert (five99.code, await five99.content()) == (599, b"status 599\n")  # unchanged
    samples = await scrape(http, lb)
    assert samples[("powerlb_outlier_ejections_refused_total", ())] == 0  # 500 and 599 are not failures


@pytest_twisted.ensureDeferred
async def test_widened_statuses_never_eject_the_last_backend_and_refusals_are_counted(
    make_backends, start_powerlb, http
):
    (a,) = make_backends(1)
    app_with_buggy_endpoints(a)
    lb = start_powerlb([a], admin="tcp:0:interface=127.0.0.1", outlier_statuses="500-599", outlier_failures=5)
    responses = await burst(http, lb.url, ["/500", "/599"] * 100)
    assert Counter(r.code for r in responses) == {500: 100, 599: 100}
    assert not lb.service.backends[0].ejected
    assert (await http.get(lb.url + "/")).code == 200
    assert (await http.get(lb.url + "/599")).code == 599
    samples = await scrape(http, lb)
    assert samples[("powerlb_outlier_ejections_refused_total", ())] >= 200 // 5
    assert lb.service.stats()["ejections_refused"] == samples[("powerlb_outlier_ejections_refused_total", ())]


@pytest_twisted.ensureDeferred
async def test_gateway_statuses_eject_and_application_errors_do_not(make_backends, start_powerlb, http):
    buggy, gateway, fine = make_backends(3)
    buggy.routes[b"/"] = answer(500)
    gateway.routes[b"/"] = answer(502)
    lb = start_powerlb([buggy, gateway, fine], outlier_failures=2, outlier_backoff="60s", retries=0)
    for _ in range(6):  # two rounds of round-robin: two answers from each
        await (await http.get(lb.url + "/")).content()
    assert [b.ejected for b in lb.service.backends] == [False, True, False]
    codes = Counter()
    for _ in range(6):
        response = await http.get(lb.url + "/")
        await response.content()
        codes[response.code] += 1
    assert codes == {500: 3, 200: 3}  # the 500s reach the client; the ejected 502 backend gets nothing
    assert lb.service.stats()["ejections_refused"] == 0


@pytest_twisted.ensureDeferred
async def test_half_a_pool_at_most_is_ejected(make_backends, start_powerlb, http):
    backends = make_backends(4)
    for backend in backends[:3]:
        backend.routes[b"/"] = answer(503)
    lb = start_powerlb(backends, outlier_failures=1, outlier_backoff="60s", retries=0)
    codes = Counter()
    for _ in range(8):
        response = await http.get(lb.url + "/")
        await response.content()
        codes[response.code] += 1
    assert sum(b.ejected for b in lb.service.backends) == 2  # 50 % of 4
    assert lb.service.stats()["ejections_refused"] >= 1
    assert not lb.service.backends[3].ejected
    assert codes[200] >= 1
