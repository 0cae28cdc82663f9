"""ClientResponder on a fake request, no sockets: when it is the client connection's producer, and
who forwards a response's headers.

A response that arrives whole is written at once and needs no flow control;
one that streams registers the responder as the producer from its head to its
end. The slow client over real sockets: tests/inproc/test_proxy.py.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, List, Optional, Tuple

from powerlb.errors import UpstreamError
from powerlb.headers import Headers
from powerlb.plan import RequestPlan
from powerlb.policies import HeaderRules
from powerlb.proxy import ClientResponder, RouteWork
from powerlb.routing import Route
from powerlb.stats import Counters


class FakeRequest:
    """What ClientResponder calls on powerlb's request, recorded."""

    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []
        self.producer: Optional[Any] = None
        self.startedWriting = False
        self.x_cache = b""
        #: The headers of the last head written, and whether the request was to forward them.
        self.written: Tuple[Headers, bool] = ([], False)
        self.channel = SimpleNamespace(factory=SimpleNamespace(log=lambda request: None))

    def when_gone(self, callback: Any) -> None:
        self.calls.append(("when_gone",))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        assert self.producer is None, "registered twice"
        self.producer = producer
        self.calls.append(("register", streaming))

    def unregisterProducer(self) -> None:
        assert self.producer is not None, "unregistered while not registered"
        self.producer = None
        self.calls.append(("unregister",))

    def send_response(
        self, status: int, reason: bytes, headers: Headers, x_cache: bytes, body: bytes, forward: bool
    ) -> None:
        self.calls.append(("response", status, body))
        self.written = (headers, forward)

    def send_head(self, status: int, reason: bytes, headers: Headers, x_cache: bytes, forward: bool) -> bool:
        self.startedWriting = True
        self.calls.append(("head", status))
        self.written = (headers, forward)
        return True

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def finish(self) -> None:
        self.calls.append(("finish",))

    def abort(self) -> None:
        self.calls.append(("abort",))

    def setResponseCode(self, status: int) -> None:
        self.calls.append(("status", status))

    def setHeader(self, name: bytes, value: bytes) -> None:
        pass


def responder(route: Optional[Route] = None) -> Tuple[ClientResponder, FakeRequest]:
    request = FakeRequest()
    route = route or Route()
    plan = RequestPlan(route, "default", None)  # type: ignore[arg-type]  # no dispatch in these tests
    return ClientResponder(request, Counters(), plan, RouteWork(route)), request  # type: ignore[arg-type]


BACKEND: Headers = [(b"content-length", b"2"), (b"connection", b"keep-alive"), (b"x-a", b"1")]


def test_the_request_forwards_the_backend_headers_as_it_writes_them() -> None:
    whole, request = responder()
    whole.response_received(200, b"OK", BACKEND, b"hi")
    assert request.written == (BACKEND, True)
    streamed, request = responder()
    streamed.head_received(200, b"OK", BACKEND)
    assert request.written == (BACKEND, True)


def test_response_rules_are_applied_to_the_forwarded_headers_first() -> None:
    route = Route(response_headers=HeaderRules(remove=(b"x-a",)))
    expected = [(b"content-length", b"2"), (b"via", b"1.1 powerlb")]
    whole, request = responder(route)
    whole.response_received(200, b"OK", BACKEND, b"hi")
    assert request.written == (expected, False)
    streamed, request = responder(route)
    streamed.head_received(200, b"OK", BACKEND)
    assert request.written == (expected, False)


def test_a_whole_response_is_written_without_a_producer() -> None:
    sink, request = responder()
    sink.response_received(200, b"OK", [(b"content-length", b"2")], b"hi")
    assert request.calls == [("when_gone",), ("response", 200, b"hi")]


def test_a_streamed_response_is_the_producer_from_its_head_to_its_end() -> None:
    sink, request = responder()
    sink.head_received(200, b"OK", [])
    assert request.producer is sink
    sink.body_received(b"a")
    sink.response_ended()
    assert request.calls == [
        ("when_gone",),
        ("register", True),
        ("head", 200),
        ("write", b"a"),
        ("unregister",),
        ("finish",),
    ]


def test_a_failure_after_the_head_unregisters_before_the_cut() -> None:
    sink, request = responder()
    sink.head_received(200, b"OK", [])
    sink.request_failed(UpstreamError("backend went away"))
    assert request.producer is None
    assert request.calls[-2:] == [("unregister",), ("abort",)]


def test_a_failure_before_any_head_answers_without_a_producer() -> None:
    sink, request = responder()
    sink.own_answer(504, "too slow")
    assert request.calls[0] == ("when_gone",)
    assert request.calls[1:] == [("status", 504), ("write", request.calls[2][1]), ("finish",)]
    assert b"too slow" in request.calls[2][1]
