"""Tests for powerlb.upstream on Twisted fakes: the pool, its connections and exchanges."""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure

from powerlb.errors import ConnectFailed, ConnectTimeout, QueueFull, QueueTimeout, UpstreamTimeout
from powerlb.testing import RecordingSink
from powerlb.upstream import QUEUE_LIMIT, UpstreamConnection, probe
from tests.support.backends import make_backend
from tests.support.upstream import Failed, Pool

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
OK_EVENTS = [("head", 200, b"OK", [(b"content-length", b"5")]), ("body", b"hello"), ("end",)]
GET_HEAD = b"GET /x HTTP/1.1\r\nhost: example\r\n\r\n"


def lose(proto: UpstreamConnection) -> None:
    proto.connectionLost(Failure(ConnectionDone()))


def served(pool: Pool, response: bytes = OK) -> Tuple[UpstreamConnection, StringTransport, RecordingSink]:
    """One GET answered with ``response`` on a new connection."""
    sink = RecordingSink()
    pool.get(sink)
    proto, transport = pool.connect()
    proto.dataReceived(response)
    return proto, transport, sink


# --- one request -------------------------------------------------------------------


def test_request_connects_writes_and_reports_the_response() -> None:
    pool = Pool(connect_timeout=3.5)
    sink = RecordingSink()
    exchange = pool.get(sink)
    assert exchange.active
    assert pool.connects == 1
    host, port, factory, timeout, _ = pool.reactor.tcpClients[0]
    assert (host, port, factory, timeout) == ("127.0.0.1", 9001, pool.factory, 3.5)

    proto, transport = pool.connect()
    assert transport.value() == GET_HEAD
    assert pool.factory.open_connections == 1
    assert pool.factory.idle_connections == 0

    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhel")
    assert sink.events == [("head", 200, b"OK", [(b"content-length", b"5")]), ("body", b"hel")]
    proto.dataReceived(b"lo")
    assert sink.events == [*OK_EVENTS[:1], ("body", b"hel"), ("body", b"lo"), ("end",)]
    assert not exchange.active
    assert not transport.disconnecting
    assert pool.factory.idle_connections == 1
    assert pool.factory.open_connections == 1


@pytest.mark.parametrize(
    ("method", "body", "framing"),
    [
        (b"POST", b"abc", b"content-length: 3\r\n\r\nabc"),
        (b"POST", b"", b"content-length: 0\r\n\r\n"),
        (b"PUT", b"", b"content-length: 0\r\n\r\n"),
        (b"PATCH", b"x", b"content-length: 1\r\n\r\nx"),
        (b"DELETE", b"", b"\r\n"),
        (b"DELETE", b"zz", b"content-length: 2\r\n\r\nzz"),
        (b"OPTIONS", b"", b"\r\n"),
    ],
)
def test_request_body_framing(method: bytes, body: bytes, framing: bytes) -> None:
    pool = Pool()
    pool.factory.request(method, b"/p", [(b"host", b"h")], body, RecordingSink(), idempotent=False)
    _, transport = pool.connect()
    assert transport.value() == method + b" /p HTTP/1.1\r\nhost: h\r\n" + framing


def test_head_request_response_has_no_body() -> None:
    pool = Pool()
    sink = RecordingSink()
    pool.factory.request(b"HEAD", b"/", [], b"", sink, idempotent=True)
    proto, transport = pool.connect()
    assert transport.value() == b"HEAD / HTTP/1.1\r\n\r\n"
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
    assert sink.events == [("head", 200, b"OK", [(b"content-length", b"100")]), ("end",)]
    assert pool.factory.idle_connections == 1


def test_close_delimited_response_ends_with_the_connection() -> None:
    pool = Pool()
    proto, _, sink = served(pool, b"HTTP/1.1 200 OK\r\n\r\npart")
    assert sink.events == [("head", 200, b"OK", []), ("body", b"part")]
    lose(proto)
    assert sink.events[-1] == ("end",)
    assert pool.factory.open_connections == 0
    assert pool.factory.idle_connections == 0


# --- keep-alive pool ---------------------------------------------------------------


def test_keep_alive_connection_is_reused() -> None:
    pool = Pool()
    proto, transport, _ = served(pool)
    transport.clear()
    sink = RecordingSink()
    pool.get(sink, b"/second")
    assert pool.connects == 1
    assert pool.factory.idle_connections == 0
    assert transport.value() == b"GET /second HTTP/1.1\r\nhost: example\r\n\r\n"
    proto.dataReceived(OK)
    assert sink.events == OK_EVENTS
    assert pool.factory.idle_connections == 1


def test_waiting_request_takes_the_connection_that_frees_up_first() -> None:
    pool = Pool()
    first, second = RecordingSink(), RecordingSink()
    pool.get(first)
    proto, transport = pool.connect()
    pool.get(second, b"/two")
    assert pool.connects == 2
    transport.clear()
    proto.dataReceived(OK)
    assert first.events == OK_EVENTS
    assert transport.value() == b"GET /two HTTP/1.1\r\nhost: example\r\n\r\n"
    proto.dataReceived(OK)
    assert second.events == OK_EVENTS
    # The second connect completes with nobody waiting: it just joins the pool.
    _, late = pool.connect()
    assert late.value() == b""
    assert pool.factory.idle_connections == 2


def test_idle_connections_reused_last_in_first_out() -> None:
    pool = Pool()
    a, b = RecordingSink(), RecordingSink()
    pool.get(a)
    pool.get(b)
    proto_a, transport_a = pool.connect()
    proto_b, transport_b = pool.connect()
    proto_b.dataReceived(OK)
    proto_a.dataReceived(OK)
    transport_a.clear()
    transport_b.clear()
    pool.get(RecordingSink())
    assert transport_a.value() != b""
    assert transport_b.value() == b""


def test_idle_timeout_closes_the_connection() -> None:
    pool = Pool(keepalive_timeout=10)
    _, transport, _ = served(pool)
    pool.reactor.advance(9.9)
    assert not transport.disconnecting
    pool.reactor.advance(0.1)
    assert transport.disconnecting


def test_idle_timer_restarts_after_reuse() -> None:
    pool = Pool(keepalive_timeout=10)
    proto, transport, _ = served(pool)
    pool.reactor.advance(8)
    pool.get(RecordingSink())
    proto.dataReceived(OK)
    pool.reactor.advance(8)
    assert not transport.disconnecting
    pool.reactor.advance(2)
    assert transport.disconnecting


def test_connection_lost_after_idle_timeout_fired() -> None:
    pool = Pool(keepalive_timeout=10)
    proto, _, _ = served(pool)
    pool.reactor.advance(10)
    lose(proto)
    assert pool.factory.idle_connections == 0
    assert pool.factory.open_connections == 0


def test_expired_idle_connection_is_not_reused() -> None:
    pool = Pool(keepalive_timeout=10)
    _, transport, _ = served(pool)
    pool.reactor.advance(10)
    transport.clear()
    pool.get(RecordingSink())
    assert transport.value() == b""
    assert pool.connects == 2


def test_idle_connection_closed_by_backend_leaves_the_pool() -> None:
    pool = Pool()
    proto, _, _ = served(pool)
    lose(proto)
    assert pool.factory.idle_connections == 0
    assert pool.factory.open_connections == 0
    assert pool.reactor.getDelayedCalls() == []
    pool.get(RecordingSink())
    assert pool.connects == 2


def test_max_idle_respected() -> None:
    pool = Pool(max_idle=1)
    a, b = RecordingSink(), RecordingSink()
    pool.get(a)
    pool.get(b)
    proto_a, transport_a = pool.connect()
    proto_b, transport_b = pool.connect()
    proto_a.dataReceived(OK)
    proto_b.dataReceived(OK)
    assert a.events == b.events == OK_EVENTS
    assert pool.factory.idle_connections == 1
    assert not transport_a.disconnecting
    assert transport_b.disconnecting


def test_max_idle_zero_never_keeps_a_connection() -> None:
    pool = Pool(max_idle=0)
    _, transport, sink = served(pool)
    assert sink.events == OK_EVENTS
    assert transport.disconnecting
    assert pool.factory.idle_connections == 0


def test_close_closes_idle_now_and_busy_when_done() -> None:
    pool = Pool()
    idle_proto, idle_transport, _ = served(pool)
    busy = RecordingSink()
    pool.get(busy)  # takes the idle connection
    pool.get(RecordingSink())
    busy_proto, busy_transport = idle_proto, idle_transport
    other_proto, other_transport = pool.connect()
    other_proto.dataReceived(OK)
    assert pool.factory.idle_connections == 1
    pool.factory.close()
    assert other_transport.disconnecting
    assert not busy_transport.disconnecting
    busy_proto.dataReceived(OK)
    assert busy.events == OK_EVENTS
    assert busy_transport.disconnecting


def test_connection_made_after_close_is_closed() -> None:
    pool = Pool()
    pool.factory.close()
    _, transport = pool.connect()
    assert transport.disconnecting


@pytest.mark.parametrize(
    "response",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_response_without_keep_alive_is_not_reused(response: bytes) -> None:
    pool = Pool()
    _, transport, sink = served(pool, response)
    assert sink.events[-2:] == OK_EVENTS[1:]
    assert transport.disconnecting
    assert pool.factory.idle_connections == 0
    pool.get(RecordingSink())
    assert pool.connects == 2


def test_http_1_0_keep_alive_is_reused() -> None:
    pool = Pool()
    _, transport, _ = served(pool, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n")
    assert not transport.disconnecting
    assert pool.factory.idle_connections == 1


def test_data_on_an_idle_connection_aborts_it() -> None:
    pool = Pool()
    proto, transport, _ = served(pool)
    proto.dataReceived(b"HTTP/1.1 200 OK\r\n")
    assert transport.disconnected
    lose(proto)
    assert pool.factory.idle_connections == 0


# --- failures ----------------------------------------------------------------------


def test_interim_responses_reach_the_sink_before_the_response() -> None:
    pool = Pool()
    _, _, sink = served(pool, b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n" + OK)
    interim = ("interim", 103, b"Early Hints", [(b"link", b"</a.css>; rel=preload")])
    assert sink.events == [interim, *OK_EVENTS]
    assert pool.factory.idle_connections == 1


def test_response_timeout() -> None:
    pool = Pool(response_timeout=5)
    sink = RecordingSink()
    pool.get(sink)
    proto, transport = pool.connect()
    pool.reactor.advance(4.9)
    assert sink.events == []
    pool.reactor.advance(0.1)
    assert sink.events == [Failed(504, False)]
    assert isinstance(sink.failure, UpstreamTimeout)
    assert sink.failure.timeout_kind == "response"
    assert transport.disconnected
    lose(proto)
    assert sink.events == [Failed(504, False)]
    assert pool.factory.open_connections == 0


def test_response_timeout_stops_at_the_head() -> None:
    pool = Pool(response_timeout=5)
    sink = RecordingSink()
    pool.get(sink)
    proto, transport = pool.connect()
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    pool.reactor.advance(59)  # from the head on, only the idle timeout (60 s) applies
    assert not transport.disconnected
    proto.dataReceived(b"hello")
    assert sink.events == OK_EVENTS


def test_interim_response_does_not_stop_the_timeout() -> None:
    pool = Pool(response_timeout=5)
    sink = RecordingSink()
    pool.get(sink)
    proto, _ = pool.connect()
    proto.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
    pool.reactor.advance(5)
    assert sink.events == [("interim", 100, b"Continue", []), Failed(504, False)]


def test_connect_timeout_is_a_retryable_connect_failure_of_its_own_kind() -> None:
    pool = Pool()
    sink = RecordingSink()
    pool.get(sink)
    pool.factory.clientConnectionFailed(None, Failure(TimeoutError()))
    assert sink.events == [Failed(502, True)]
    assert isinstance(sink.failure, ConnectTimeout) and sink.failure.timeout_kind == "connect"


def test_response_time_is_measured_from_the_request_sent_to_the_head() -> None:
    pool = Pool()
    exchange = pool.get(RecordingSink())
    pool.reactor.advance(3)  # connecting does not count
    proto, _ = pool.connect()
    pool.reactor.advance(0.25)
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    pool.reactor.advance(7)  # nor does the body
    proto.dataReceived(b"hello")
    assert exchange.response_time == 0.25


def test_connect_failure_is_retryable() -> None:
    pool = Pool()
    sink = RecordingSink()
    exchange = pool.get(sink)
    pool.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert sink.events == [Failed(502, True)]
    assert isinstance(sink.failure, ConnectFailed)
    assert "cannot connect to backend" in sink.failure.reason
    assert sink.failure.timeout_kind == ""
    assert not exchange.active
    # A later request still gets its own connection attempt.
    pool.get(RecordingSink())
    assert pool.connects == 2


def test_connect_failure_with_nobody_waiting_is_ignored() -> None:
    pool = Pool()
    sink = RecordingSink()
    exchange = pool.get(sink)
    exchange.abort()
    pool.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert sink.events == []


def test_invalid_response_fails_with_502_and_aborts() -> None:
    pool = Pool()
    proto, transport, sink = served(
        pool, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    assert sink.events == [Failed(502, False)]
    assert "invalid response" in sink.failure.reason
    assert transport.disconnected
    lose(proto)
    assert sink.events == [Failed(502, False)]
    assert pool.factory.idle_connections == 0


def test_invalid_body_after_head_fails_with_502() -> None:
    pool = Pool()
    _, transport, sink = served(pool, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
    assert sink.events == [("head", 200, b"OK", [(b"transfer-encoding", b"chunked")]), Failed(502, False)]
    assert transport.disconnected


def test_fresh_connection_closed_before_response_fails_without_retry() -> None:
    pool = Pool()
    sink = RecordingSink()
    pool.get(sink)
    proto, _ = pool.connect()
    lose(proto)
    assert sink.events == [Failed(502, False)]
    assert pool.connects == 1


def test_connection_closed_mid_body_fails() -> None:
    pool = Pool()
    proto, _, sink = served(pool, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
    lose(proto)
    assert sink.events[-1] == Failed(502, False)


def test_stale_reused_connection_resends_idempotent_request_on_a_fresh_one() -> None:
    pool = Pool()
    proto, _, _ = served(pool)
    sink = RecordingSink()
    pool.get(sink, b"/again")
    assert pool.connects == 1
    lose(proto)  # the backend had closed it: no response byte
    assert sink.events == []
    assert pool.connects == 2
    fresh_proto, fresh = pool.connect()
    assert fresh.value() == b"GET /again HTTP/1.1\r\nhost: example\r\n\r\n"
    fresh_proto.dataReceived(OK)
    assert sink.events == OK_EVENTS


def test_stale_reused_connection_fails_non_idempotent_request() -> None:
    pool = Pool()
    proto, _, _ = served(pool)
    sink = RecordingSink()
    pool.get(sink, idempotent=False, method=b"POST")
    lose(proto)
    assert sink.events == [Failed(502, False)]
    assert pool.connects == 1


def test_reused_connection_closed_after_the_head_is_not_retried() -> None:
    pool = Pool()
    proto, _, _ = served(pool)
    sink = RecordingSink()
    pool.get(sink)
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
    lose(proto)
    assert sink.events[-1] == Failed(502, False)
    assert pool.connects == 1


def test_stale_retry_does_not_use_other_idle_connections() -> None:
    pool = Pool()
    a, b = RecordingSink(), RecordingSink()
    pool.get(a)
    pool.get(b)
    proto_a, transport_a = pool.connect()
    proto_b, _ = pool.connect()
    proto_a.dataReceived(OK)
    proto_b.dataReceived(OK)  # pool: [a, b]; b is reused first
    transport_a.clear()
    sink = RecordingSink()
    pool.get(sink)
    lose(proto_b)
    assert transport_a.disconnecting
    assert transport_a.value() == b""
    assert pool.connects == 3


# --- abort and flow control --------------------------------------------------------


def test_abort_before_a_connection_is_assigned() -> None:
    pool = Pool()
    sink = RecordingSink()
    exchange = pool.get(sink)
    exchange.abort()
    assert not exchange.active
    _, transport = pool.connect()
    assert transport.value() == b""
    assert pool.factory.idle_connections == 1
    exchange.abort()  # idempotent
    assert sink.events == []


def test_abort_after_the_connection_is_assigned() -> None:
    pool = Pool()
    sink = RecordingSink()
    exchange = pool.get(sink)
    proto, transport = pool.connect()
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
    exchange.stopProducing()
    assert transport.disconnected
    proto.dataReceived(b"llo")
    pool.reactor.advance(100)
    lose(proto)
    assert sink.events == [("head", 200, b"OK", [(b"content-length", b"5")]), ("body", b"he")]
    assert pool.factory.open_connections == 0
    assert pool.reactor.getDelayedCalls() == []


def test_abort_before_the_head_cancels_the_timeout() -> None:
    pool = Pool(response_timeout=5)
    sink = RecordingSink()
    exchange = pool.get(sink)
    pool.connect()
    exchange.abort()
    assert pool.reactor.getDelayedCalls() == []
    pool.reactor.advance(10)
    assert sink.events == []


def test_sink_aborting_from_a_callback_mid_feed() -> None:
    pool = Pool()

    class Aborting(RecordingSink):
        def body_received(self, data: bytes) -> None:
            super().body_received(data)
            exchange.abort()

    sink = Aborting()
    exchange = pool.get(sink)
    proto, transport = pool.connect()
    proto.dataReceived(OK[:-2])  # not all in one read: heard in parts, the end still to come
    assert transport.disconnected
    assert sink.events == [OK_EVENTS[0], ("body", b"hel")]


def test_a_sink_aborting_as_it_hears_a_whole_response_leaves_the_connection_pooled() -> None:
    """A response all in one read comes whole, after its exchange has left the connection (which
    is back in the pool): an abort then does nothing."""
    pool = Pool()

    class Aborting(RecordingSink):
        def response_received(self, status: int, reason: bytes, headers: Any, body: bytes) -> None:
            super().response_received(status, reason, headers, body)
            exchange.abort()

    sink = Aborting()
    exchange = pool.get(sink)
    proto, transport = pool.connect()
    proto.dataReceived(OK)
    assert sink.events == OK_EVENTS and sink.whole
    assert not transport.disconnected
    assert pool.factory.idle_connections == 1


def test_pause_and_resume_are_forwarded_to_the_transport() -> None:
    pool = Pool()
    sink = RecordingSink()
    exchange = pool.get(sink)
    proto, transport = pool.connect()
    assert transport.producerState == "producing"
    exchange.pauseProducing()
    assert transport.producerState == "paused"
    exchange.resumeProducing()
    assert transport.producerState == "producing"
    exchange.pauseProducing()
    proto.dataReceived(OK)
    # The connection goes back to the pool reading again.
    assert transport.producerState == "producing"
    assert sink.events == OK_EVENTS


def test_pause_before_the_connection_is_assigned() -> None:
    pool = Pool()
    exchange = pool.get(RecordingSink())
    exchange.pauseProducing()
    _, transport = pool.connect()
    assert transport.producerState == "paused"
    exchange.resumeProducing()
    assert transport.producerState == "producing"


def test_pause_after_the_end_is_harmless() -> None:
    pool = Pool()
    sink = RecordingSink()
    exchange = pool.get(sink)
    proto, transport = pool.connect()
    proto.dataReceived(OK)
    exchange.pauseProducing()
    exchange.resumeProducing()
    assert transport.producerState == "producing"


# --- idle timeout between body pieces ------------------------------------------------

HEAD_100 = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"


class CountingClock(MemoryReactorClock):
    """A fake reactor that counts the timers created."""

    def __init__(self) -> None:
        super().__init__()
        self.timers_created = 0

    def callLater(self, delay: float, callable: Any, *args: Any, **kw: Any) -> Any:
        self.timers_created += 1
        return super().callLater(delay, callable, *args, **kw)


def streaming(pool: Pool) -> Tuple[Any, UpstreamConnection, StringTransport, RecordingSink]:
    """A GET whose response head and first body bytes (of 100) have arrived."""
    sink = RecordingSink()
    exchange = pool.get(sink)
    proto, transport = pool.connect()
    proto.dataReceived(HEAD_100 + b"he")
    return exchange, proto, transport, sink


def test_silence_mid_body_fails_with_504_and_aborts() -> None:
    pool = Pool(idle_timeout=10, response_timeout=5)
    _, proto, transport, sink = streaming(pool)
    pool.reactor.advance(9.9)
    assert not transport.disconnected
    assert sink.events[-1] == ("body", b"he")
    pool.reactor.advance(0.1)
    assert sink.events[-1] == Failed(504, False)
    assert isinstance(sink.failure, UpstreamTimeout)
    assert sink.failure.reason == "backend sent nothing for 10 s mid-response"
    assert sink.failure.timeout_kind == "idle"
    assert transport.disconnected
    lose(proto)
    assert sink.events[-1] == Failed(504, False)
    assert pool.factory.open_connections == 0
    assert pool.reactor.getDelayedCalls() == []


def test_silence_after_a_head_without_body_bytes_fails_with_504() -> None:
    pool = Pool(idle_timeout=10)
    sink = RecordingSink()
    pool.get(sink)
    proto, _ = pool.connect()
    proto.dataReceived(HEAD_100)
    pool.reactor.advance(10)
    assert sink.events == [("head", 200, b"OK", [(b"content-length", b"100")]), Failed(504, False)]


def test_idle_timer_rearms_for_the_time_left_across_many_pieces() -> None:
    clock = CountingClock()
    pool = Pool(clock, idle_timeout=10, response_timeout=5)
    _, proto, transport, sink = streaming(pool)
    for _ in range(49):
        pool.reactor.advance(1)
        proto.dataReceived(b"x")
    assert len(clock.getDelayedCalls()) == 1
    # One timer for the exchange, re-armed at most once per idle period: not one per piece.
    assert clock.timers_created <= 1 + 49 // 10 + 1
    pool.reactor.advance(9.9)  # silence counts from the last piece
    assert not transport.disconnected
    pool.reactor.advance(0.1)
    assert transport.disconnected
    assert sink.events[-1] == Failed(504, False)


def test_pieces_just_before_each_deadline_keep_the_exchange_alive() -> None:
    pool = Pool(idle_timeout=10)
    _, proto, transport, sink = streaming(pool)
    for _ in range(20):
        pool.reactor.advance(9.9)
        proto.dataReceived(b"x")
    assert not transport.disconnected
    proto.dataReceived(b"y" * 78)
    assert sink.events[-1] == ("end",)
    assert pool.factory.idle_connections == 1
    # The exchange's timer lapses when it next fires; then only the keep-alive sweep is left.
    pool.reactor.advance(10)
    assert [call.func.__name__ for call in pool.reactor.getDelayedCalls()] == ["_sweep_idle"]


def test_keep_alive_requests_schedule_no_timer_each() -> None:
    clock = CountingClock()
    pool = Pool(clock, keepalive_timeout=60, response_timeout=30)
    proto, _, _ = served(pool)
    created = clock.timers_created
    for _ in range(100):
        clock.advance(0.01)
        sink = RecordingSink()
        pool.get(sink)
        proto.dataReceived(OK)
        assert sink.events[-1] == ("end",)
    assert clock.timers_created == created
    assert pool.factory.open_connections == 1


def test_idle_connections_are_swept_oldest_first() -> None:
    pool = Pool(keepalive_timeout=10)
    sinks = [RecordingSink(), RecordingSink()]
    for sink in sinks:
        pool.get(sink)
    (first, first_transport), (second, second_transport) = pool.connect(), pool.connect()
    first.dataReceived(OK)  # idle from 0
    pool.reactor.advance(4)
    second.dataReceived(OK)  # idle from 4
    pool.reactor.advance(6)
    assert first_transport.disconnecting and not second_transport.disconnecting
    assert pool.factory.idle_connections == 1
    pool.reactor.advance(4)
    assert second_transport.disconnecting
    assert pool.factory.idle_connections == 0


def test_paused_exchange_does_not_time_out_for_idling() -> None:
    pool = Pool(idle_timeout=10)
    exchange, _, transport, sink = streaming(pool)
    pool.reactor.advance(5)
    exchange.pauseProducing()
    pool.reactor.advance(100)
    assert not transport.disconnected
    assert sink.events[-1] == ("body", b"he")
    exchange.resumeProducing()  # silence counts from here
    pool.reactor.advance(9.9)
    assert not transport.disconnected
    pool.reactor.advance(0.1)
    assert transport.disconnected
    assert sink.events[-1] == Failed(504, False)


def test_brief_pause_between_checks_counts_silence_from_the_resume() -> None:
    pool = Pool(idle_timeout=10)
    exchange, _, transport, _ = streaming(pool)
    pool.reactor.advance(8)
    exchange.pauseProducing()
    pool.reactor.advance(1)
    exchange.resumeProducing()
    pool.reactor.advance(9.9)
    assert not transport.disconnected
    pool.reactor.advance(0.1)
    assert transport.disconnected


def test_idle_timeout_shorter_than_the_response_timeout() -> None:
    pool = Pool(idle_timeout=2, response_timeout=30)
    sink = RecordingSink()
    pool.get(sink)
    proto, transport = pool.connect()
    pool.reactor.advance(29.9)  # the head may take the whole response timeout
    assert not transport.disconnected
    pool.reactor.advance(0.1)
    assert sink.events == [Failed(504, False)]
    assert sink.failure.reason == "backend did not answer in time"

    sink = RecordingSink()
    pool.get(sink)
    proto, transport = pool.connect()
    pool.reactor.advance(3)
    proto.dataReceived(HEAD_100)
    pool.reactor.advance(1.9)
    assert not transport.disconnected
    pool.reactor.advance(0.1)
    assert sink.events[-1] == Failed(504, False)


def test_idle_timeout_applies_soon_after_a_head_under_a_long_response_timeout() -> None:
    pool = Pool(idle_timeout=60, response_timeout=300)
    sink = RecordingSink()
    pool.get(sink)
    proto, transport = pool.connect()
    pool.reactor.advance(10)
    proto.dataReceived(HEAD_100)
    pool.reactor.advance(59.9)
    assert not transport.disconnected
    pool.reactor.advance(0.1)
    assert sink.events[-1] == Failed(504, False)


def test_exchange_timer_lapses_after_the_response_end() -> None:
    pool = Pool(keepalive_timeout=1000, response_timeout=30)
    _, transport, sink = served(pool)
    assert sink.events == OK_EVENTS
    pool.reactor.advance(30)  # it fires with no exchange in progress: nothing happens, nothing re-armed
    (keepalive,) = pool.reactor.getDelayedCalls()
    assert keepalive.getTime() == 1000
    assert not transport.disconnecting


# --- connection limit and wait queue -----------------------------------------------


def get_numbered(pool: Pool, n: int) -> List[RecordingSink]:
    """GET /0 ... /n-1; their sinks."""
    sinks = [RecordingSink() for _ in range(n)]
    for i, sink in enumerate(sinks):
        pool.get(sink, b"/%d" % i)
    return sinks


def sent_target(transport: StringTransport) -> bytes:
    target = transport.value().split(b" ")[1]
    transport.clear()
    return target


def test_limit_caps_connections_and_the_queue_is_served_first_in_first_out() -> None:
    pool = Pool(max_connections=2)
    sinks = get_numbered(pool, 5)
    assert pool.connects == 2
    assert pool.factory.queued == 5
    proto_a, transport_a = pool.connect()
    proto_b, transport_b = pool.connect()
    assert (sent_target(transport_a), sent_target(transport_b)) == (b"/0", b"/1")
    assert pool.factory.queued == 3
    proto_b.dataReceived(OK)
    assert sent_target(transport_b) == b"/2"
    proto_a.dataReceived(OK)
    assert sent_target(transport_a) == b"/3"
    proto_a.dataReceived(OK)
    assert sent_target(transport_a) == b"/4"
    assert pool.factory.queued == 0
    proto_b.dataReceived(OK)
    proto_a.dataReceived(OK)
    assert all(sink.events == OK_EVENTS for sink in sinks)
    assert pool.connects == 2
    assert pool.factory.idle_connections == 2


def test_limit_holds_while_connections_come_and_go() -> None:
    pool = Pool(max_connections=3)
    sinks = get_numbered(pool, 20)
    live: List[UpstreamConnection] = []
    closed = answered = 0
    while True:
        while pool.connects - closed > len(live):  # attempts not yet connected
            live.append(pool.connect()[0])
        assert pool.connects - closed <= 3
        busy = [p for p in live if p.exchange is not None]
        if not busy:
            break
        # Every other answer closes its connection, so slots also free through connection loss.
        proto = busy[0]
        if answered % 2:
            proto.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
            lose(proto)
            live.remove(proto)
            closed += 1
        else:
            proto.dataReceived(OK)
        answered += 1
    assert answered == 20
    assert all(sink.events[-1] == ("end",) for sink in sinks)
    assert pool.connects > 3
    assert pool.factory.queued == 0


def test_idle_connection_is_reused_under_the_limit() -> None:
    pool = Pool(max_connections=1)
    served(pool)
    sink = RecordingSink()
    pool.get(sink)
    assert pool.connects == 1
    assert pool.factory.queued == 0


def test_queue_timeout_fails_with_503_and_removes_the_request() -> None:
    pool = Pool(max_connections=1, queue_timeout=5)
    first, second = get_numbered(pool, 2)
    proto, transport = pool.connect()
    transport.clear()
    pool.reactor.advance(4.9)
    assert second.events == []
    pool.reactor.advance(0.1)
    assert second.events == [Failed(503, True)]
    assert isinstance(second.failure, QueueTimeout)
    assert second.failure.reason == "backend queue timeout (1 connections busy)"
    assert pool.factory.queued == 0
    proto.dataReceived(OK)
    assert first.events == OK_EVENTS
    assert transport.value() == b""
    assert pool.factory.idle_connections == 1


def test_each_queued_request_gets_its_own_deadline_from_one_timer() -> None:
    pool = Pool(max_connections=1, queue_timeout=5, response_timeout=100)
    pool.get(RecordingSink())
    pool.connect()
    early = RecordingSink()
    pool.get(early)
    pool.reactor.advance(2)
    late = RecordingSink()
    pool.get(late)
    assert len(pool.reactor.getDelayedCalls()) == 2  # the response timer, one queue timer
    pool.reactor.advance(3)
    assert early.events == [Failed(503, True)]
    assert late.events == []
    pool.reactor.advance(1.9)
    assert late.events == []
    pool.reactor.advance(0.1)
    assert late.events == [Failed(503, True)]
    assert len(pool.reactor.getDelayedCalls()) == 1


def test_request_waiting_for_a_connect_in_progress_has_no_queue_deadline() -> None:
    pool = Pool(max_connections=1, queue_timeout=1, connect_timeout=5)
    sink = RecordingSink()
    pool.get(sink)
    pool.reactor.advance(3)
    assert sink.events == []
    _, transport = pool.connect()
    assert transport.value() == GET_HEAD


def test_full_queue_refuses_at_once_with_503() -> None:
    pool = Pool(max_connections=1)
    get_numbered(pool, QUEUE_LIMIT)
    assert pool.factory.queued == QUEUE_LIMIT
    sink = RecordingSink()
    exchange = pool.get(sink)
    assert sink.events == []  # not before request() returns
    pool.reactor.advance(0)
    assert sink.events == [Failed(503, True)]
    assert isinstance(sink.failure, QueueFull)
    assert sink.failure.reason == "backend queue full"
    assert not exchange.active
    assert pool.factory.queued == QUEUE_LIMIT


def test_refused_request_aborted_before_the_refusal_hears_nothing() -> None:
    pool = Pool(max_connections=1)
    get_numbered(pool, QUEUE_LIMIT)
    sink = RecordingSink()
    pool.get(sink).abort()
    pool.reactor.advance(0)
    assert sink.events == []


def test_abort_of_a_queued_request_removes_it_and_cancels_its_timer() -> None:
    pool = Pool(max_connections=1, queue_timeout=5)
    first = RecordingSink()
    pool.get(first)
    proto, transport = pool.connect()
    (response_timer,) = pool.reactor.getDelayedCalls()
    sink = RecordingSink()
    exchange = pool.get(sink)
    assert pool.factory.queued == 1
    exchange.abort()
    assert pool.factory.queued == 0
    assert pool.reactor.getDelayedCalls() == [response_timer]
    pool.reactor.advance(5)
    assert sink.events == []
    transport.clear()
    proto.dataReceived(OK)
    assert transport.value() == b""
    assert pool.factory.idle_connections == 1


def test_abort_of_one_queued_request_leaves_the_others_deadlines() -> None:
    pool = Pool(max_connections=1, queue_timeout=5)
    pool.get(RecordingSink())
    pool.connect()
    aborted, kept = RecordingSink(), RecordingSink()
    exchange = pool.get(aborted)
    pool.get(kept)
    exchange.abort()
    pool.reactor.advance(5)
    assert aborted.events == []
    assert kept.events == [Failed(503, True)]


def test_connection_closed_after_a_response_frees_a_slot_for_the_queue() -> None:
    pool = Pool(max_connections=1)
    _, second = get_numbered(pool, 2)
    proto, _ = pool.connect()
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello")
    assert pool.connects == 1  # still open until the close completes
    lose(proto)
    assert pool.connects == 2
    proto, transport = pool.connect()
    assert sent_target(transport) == b"/1"
    proto.dataReceived(OK)
    assert second.events == OK_EVENTS


def test_connect_failure_frees_a_slot_for_the_queue() -> None:
    pool = Pool(max_connections=1)
    first, _ = get_numbered(pool, 2)
    pool.factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    assert first.events == [Failed(502, True)]
    assert pool.connects == 2
    _, transport = pool.connect()
    assert sent_target(transport) == b"/1"


def test_stale_retry_waits_for_a_slot_under_the_limit() -> None:
    pool = Pool(max_connections=1)
    proto, _, _ = served(pool)
    sink = RecordingSink()
    pool.get(sink)
    lose(proto)  # stale keep-alive connection: the request is sent again on a fresh one
    assert pool.connects == 2
    proto, transport = pool.connect()
    assert transport.value() == GET_HEAD
    proto.dataReceived(OK)
    assert sink.events == OK_EVENTS


# --- probe -------------------------------------------------------------------------


def test_probe_fires_with_the_status() -> None:
    reactor = MemoryReactorClock()
    backend = make_backend()
    d = probe(reactor, backend, b"/health", 2.0)
    results: List[Any] = []
    d.addBoth(results.append)
    ((host, port, factory, timeout, _),) = reactor.tcpClients
    assert (host, port, timeout) == ("127.0.0.1", 9001, 2.0)
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    assert transport.value() == (
        b"GET /health HTTP/1.1\r\nhost: 127.0.0.1:9001\r\nuser-agent: powerlb-health-check\r\n"
        b"connection: close\r\n\r\n"
    )
    proto.dataReceived(b"HTTP/1.1 503 Unavailable\r\nContent-Length: 4\r\n\r\ndown")
    assert results == [503]
    assert transport.disconnecting


def test_probe_times_out() -> None:
    reactor = MemoryReactorClock()
    backend = make_backend()
    d = probe(reactor, backend, b"/", 2.0)
    factory = reactor.tcpClients[0][2]
    factory.buildProtocol(None).makeConnection(StringTransport())
    reactor.advance(2.0)
    errors: List[Failure] = []
    d.addErrback(errors.append)
    assert errors[0].check(UpstreamTimeout)
    assert errors[0].value.status == 504


def test_probe_connect_failure() -> None:
    reactor = MemoryReactorClock()
    backend = make_backend()
    d = probe(reactor, backend, b"/", 2.0)
    reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
    errors: List[Failure] = []
    d.addErrback(errors.append)
    assert errors[0].check(ConnectFailed)


def test_cancelling_a_probe_aborts_the_connection() -> None:
    reactor = MemoryReactorClock()
    backend = make_backend()
    d = probe(reactor, backend, b"/", 2.0)
    proto = reactor.tcpClients[0][2].buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    errors: List[Failure] = []
    d.addErrback(errors.append)
    d.cancel()
    assert transport.disconnected
    assert errors[0].check(CancelledError)
    proto.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    lose(proto)
    assert len(errors) == 1


def test_cancelling_a_probe_before_it_connects() -> None:
    reactor = MemoryReactorClock()
    backend = make_backend()
    d = probe(reactor, backend, b"/", 2.0)
    errors: List[Failure] = []
    d.addErrback(errors.append)
    d.cancel()
    assert errors[0].check(CancelledError)
    transport = StringTransport()
    reactor.tcpClients[0][2].buildProtocol(None).makeConnection(transport)
    assert transport.value() == b""
    assert transport.disconnecting  # max_idle=0: nothing is kept
