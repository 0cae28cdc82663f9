"""The dispatcher on fake backends (powerlb.testing), no sockets: retries, the hold limit, flow control.

Each test sends one request through :meth:`Dispatcher.send` to a
:class:`~powerlb.testing.FakePool` and reads what the caller's
:class:`~powerlb.testing.RecordingSink` heard.
"""

from __future__ import annotations

from typing import Any, Tuple

import pytest

from powerlb.dispatch import HOLD_LIMIT, Dispatcher, UpstreamRequest
from powerlb.testing import FAILURES, FakePool, RecordingSink

HOST = [(b"host", b"example")]


def send(
    pool: FakePool, method: bytes = b"GET", body: bytes = b"", **settings: Any
) -> Tuple[Dispatcher, Any, RecordingSink]:
    """Send ``method /x`` through a dispatcher on ``pool``; (dispatcher, dispatch, sink)."""
    dispatcher = pool.dispatcher(**settings)
    sink = RecordingSink()
    dispatch = dispatcher.send(UpstreamRequest(method, b"/x", HOST, body), sink)
    return dispatcher, dispatch, sink


def test_a_response_passes_through_and_the_backend_figures_follow() -> None:
    pool = FakePool(1)
    upstream = pool.upstreams[0]
    upstream.answer(200, [(b"x-from", b"a")], b"hello", delay=1.5)
    _, dispatch, sink = send(pool)

    (exchange,) = upstream.requests
    assert (exchange.method, exchange.target, exchange.headers, exchange.idempotent) == (
        b"GET",
        b"/x",
        HOST,
        True,
    )
    assert pool.backends[0].in_flight == 1
    pool.clock.advance(1.5)
    assert sink.events == [
        ("head", 200, b"", [(b"x-from", b"a"), (b"content-length", b"5")]),
        ("body", b"hello"),
        ("end",),
    ]
    backend = pool.backends[0]
    assert (backend.in_flight, backend.requests, backend.failures) == (0, 1, 0)
    assert dispatch.backend is backend
    assert dispatch.upstream_time == 1.5  # from the clock, to the latency histogram


@pytest.mark.parametrize("failure", sorted(FAILURES))
def test_an_idempotent_request_failing_before_any_response_goes_to_another_backend(failure: str) -> None:
    pool = FakePool(2)
    first, second = pool.upstreams
    first.fail(failure)
    second.answer(200, body=b"from b")
    dispatcher, dispatch, sink = send(pool)
    pool.clock.advance(0)

    assert pool.received() == [1, 1]
    assert (sink.status, sink.body, sink.ended) == (200, b"from b", True)
    assert dispatcher.counters.retries == 1
    assert dispatch.backend is pool.backends[1]
    assert pool.backends[0].in_flight == pool.backends[1].in_flight == 0
    # A busy backend (no connection to spare) is not failing: only the others count against it.
    assert pool.backends[0].failures == (0 if failure == "busy" else 1)


def test_timeouts_are_counted_by_kind() -> None:
    pool = FakePool(2)
    pool.upstreams[0].fail("timeout", delay=30)
    pool.upstreams[1].fail("idle")
    send(pool)
    pool.clock.advance(30)
    assert pool.backends[0].timeouts["response"] == 1
    assert pool.backends[1].timeouts["idle"] == 1


@pytest.mark.parametrize("method", [b"POST", b"PATCH"])
def test_a_non_idempotent_request_is_never_sent_twice(method: bytes) -> None:
    pool = FakePool(2)
    pool.upstreams[0].fail("reset")
    dispatcher, _, sink = send(pool, method, b"payload", retries=3)
    (exchange,) = pool.upstreams[0].requests
    assert (exchange.body, exchange.idempotent) == (b"payload", False)
    pool.clock.advance(0)

    assert pool.received() == [1, 0]
    assert sink.events == [("failed", sink.failure)]
    assert sink.failure.status == 502
    assert dispatcher.counters.retries == 0


def test_an_idempotent_request_with_a_body_goes_again_but_not_as_replayable() -> None:
    """A PUT may be sent again, yet the pool may not replay it on a stale connection by itself."""
    pool = FakePool(2)
    pool.upstreams[0].fail("refused")
    pool.upstreams[1].answer(201)
    _, _, sink = send(pool, b"PUT", b"doc")
    pool.clock.advance(0)
    assert [u.requests[0].idempotent for u in pool.upstreams] == [False, False]
    assert [u.requests[0].body for u in pool.upstreams] == [b"doc", b"doc"]
    assert sink.status == 201


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_retries_stop_at_the_limit_with_the_last_failure(retries: int) -> None:
    pool = FakePool(4)
    for upstream in pool.upstreams:
        upstream.fail("refused")
    dispatcher, _, sink = send(pool, retries=retries)
    pool.clock.advance(0)

    assert sum(pool.received()) == retries + 1
    assert dispatcher.counters.retries == retries
    assert sink.events == [("failed", sink.failure)]
    assert (sink.failure.status, sink.failure.retryable) == (502, True)


def test_retries_stop_when_no_other_backend_is_left() -> None:
    pool = FakePool(2)
    pool.upstreams[0].fail("refused")
    pool.upstreams[1].fail("timeout")
    dispatcher, _, sink = send(pool, retries=5)
    pool.clock.advance(0)
    assert pool.received() == [1, 1]
    assert dispatcher.counters.retries == 1
    assert sink.failure.status == 504  # the last backend's failure is the answer


def test_no_healthy_backend_is_a_503_without_any_request() -> None:
    pool = FakePool(2)
    for backend in pool.backends:
        backend.healthy = False
    _, dispatch, sink = send(pool)
    assert pool.received() == [0, 0]
    assert sink.failure.status == 503
    assert dispatch.backend is None


# --- the hold limit: what the caller has seen decides whether a retry is possible ------------


def test_a_small_response_is_held_until_complete() -> None:
    pool = FakePool(1)
    _, _, sink = send(pool)
    (exchange,) = pool.upstreams[0].requests
    exchange.send_head(200, [(b"content-length", b"10")])
    exchange.send_body(b"01234")
    assert sink.events == []
    exchange.send_body(b"56789")
    exchange.end()
    assert sink.status == 200
    assert sink.body == b"0123456789"
    assert sink.ended
    assert sink.whole  # the held response goes on in one event (IResponseSink.response_received)


def test_a_chunked_response_is_never_held_whatever_its_content_length() -> None:
    """Transfer-Encoding overrides Content-Length (the body's length is unknown): not held."""
    pool = FakePool(1)
    _, _, sink = send(pool)
    (exchange,) = pool.upstreams[0].requests
    exchange.send_head(200, [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")])
    assert sink.status == 200
    exchange.send_body(b"x" * (HOLD_LIMIT + 1))
    assert sink.body == b"x" * (HOLD_LIMIT + 1)


def test_a_response_over_the_hold_limit_streams_as_its_parts() -> None:
    pool = FakePool(1)
    _, dispatch, sink = send(pool)
    (exchange,) = pool.upstreams[0].requests
    exchange.send_head(200, [(b"content-length", b"%d" % (HOLD_LIMIT + 1))])
    assert sink.status == 200 and dispatch.committed
    exchange.send_body(b"x" * (HOLD_LIMIT + 1))
    exchange.end()
    assert (sink.body, sink.ended, sink.whole) == (b"x" * (HOLD_LIMIT + 1), True, False)


def test_a_small_response_cut_mid_body_is_retried_and_the_caller_sees_only_the_second() -> None:
    pool = FakePool(2)
    pool.upstreams[0].answer(200, [(b"content-length", b"10")], b"01234", cut="reset")
    pool.upstreams[1].answer(200, body=b"whole")
    dispatcher, _, sink = send(pool)
    pool.clock.advance(0)
    assert sink.events == [("head", 200, b"", [(b"content-length", b"5")]), ("body", b"whole"), ("end",)]
    assert dispatcher.counters.retries == 1


@pytest.mark.parametrize(
    ("length", "held"),
    [(HOLD_LIMIT, True), (HOLD_LIMIT + 1, False), (None, False)],
    ids=["at-the-limit", "over-the-limit", "no-length"],
)
def test_a_response_the_caller_has_seen_is_never_retried(length: Any, held: bool) -> None:
    """Over the hold limit (or of unknown length) the head goes to the caller at once: a failure after
    it cuts the response; at the limit the response is held, so the failure is retried."""
    pool = FakePool(2)
    framing = (b"transfer-encoding", b"chunked") if length is None else (b"content-length", b"%d" % length)
    pool.upstreams[1].answer(200, body=b"second")
    dispatcher, _, sink = send(pool)
    (exchange,) = pool.upstreams[0].requests
    exchange.send_head(200, [framing])
    assert (sink.status is not None) is not held
    exchange.send_body(b"part")
    exchange.fail("reset")
    pool.clock.advance(0)

    if held:
        assert (sink.body, sink.ended, dispatcher.counters.retries) == (b"second", True, 1)
        assert pool.received() == [1, 1]
    else:
        assert sink.events == [("head", 200, b"", [framing]), ("body", b"part"), ("failed", sink.failure)]
        assert pool.received() == [1, 0]
        assert dispatcher.counters.retries == 0


# --- the caller's flow control and departure ------------------------------------------------


def test_pause_and_resume_reach_the_exchange_and_a_retry_starts_paused() -> None:
    pool = FakePool(2)
    pool.upstreams[0].fail("refused")
    _, dispatch, _ = send(pool)
    dispatch.pauseProducing()
    assert pool.upstreams[0].requests[0].paused
    pool.clock.advance(0)
    retry = pool.upstreams[1].requests[0]
    assert retry.paused
    dispatch.resumeProducing()
    assert not retry.paused


def test_a_caller_going_away_aborts_the_exchange_and_hears_nothing_more() -> None:
    pool = FakePool(1)
    _, dispatch, sink = send(pool)
    (exchange,) = pool.upstreams[0].requests
    dispatch.stopProducing()
    assert exchange.aborted
    assert pool.backends[0].in_flight == 0
    exchange.respond(200, body=b"late")  # the backend answers a connection nobody reads
    assert sink.events == []
