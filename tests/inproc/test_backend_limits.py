"""End to end over real sockets: the idle timeout mid-body and the per-backend connection limit."""

from __future__ import annotations

import time
from typing import Any, Callable, List, Tuple

import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.web._newclient import ResponseFailed
from twisted.web.server import NOT_DONE_YET, Request

from tests.support.inproc import wait_for

#: No cache (concurrent GETs of one URL would be coalesced) and no retry on another backend.
PLAIN = {"cache_size": 0, "retries": 0}


class Slow:
    """A route that answers after ``delay`` seconds and records how many requests it held at once."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.active = 0
        self.peak = 0

    def __call__(self, request: Request) -> Any:
        self.active += 1
        self.peak = max(self.peak, self.active)
        call = reactor.callLater(self.delay, self._answer, request)
        request.notifyFinish().addBoth(self._ended, call)
        return NOT_DONE_YET

    def _answer(self, request: Request) -> None:
        request.write(b"slow answer")
        request.finish()

    def _ended(self, result: Any, call: Any) -> None:
        self.active -= 1
        if call.active():  # the connection was lost first
            call.cancel()


def hang_after(first_bytes: bytes, length: int = 100) -> Callable[[Request], Any]:
    """A route that announces ``length`` bytes, sends ``first_bytes`` and then nothing more."""

    def handler(request: Request) -> Any:
        request.setHeader(b"content-length", b"%d" % length)
        request.write(first_bytes)  # b"" still sends the head
        return NOT_DONE_YET

    return handler


async def timed_get(http: Any, url: str) -> Tuple[int, bytes, float]:
    """GET ``url``: the status, the body and the seconds it all took."""
    start = time.monotonic()
    response = await http.get(url)
    body = await response.content()
    return response.code, body, time.monotonic() - start


@pytest_twisted.ensureDeferred
async def test_backend_silent_mid_body_cuts_the_client_within_the_idle_timeout(
    make_backends: Any, start_powerlb: Any, http: Any
) -> None:
    (a,) = make_backends(1)
    a.routes[b"/hung"] = hang_after(b"part", length=1 << 20)  # over HOLD_LIMIT: streamed, not held
    lb = start_powerlb([a], idle_timeout="300ms", **PLAIN)
    start = time.monotonic()
    response = await http.get(lb.url + "/hung")
    assert response.code == 200
    with pytest.raises(ResponseFailed):
        await response.content()  # the head was out: the connection is cut
    assert 0.25 <= time.monotonic() - start < 3.0
    client = lb.service.clients[lb.service.backends[0]]
    assert client.open_connections == 0


@pytest_twisted.ensureDeferred
async def test_backend_silent_after_the_head_gives_504_within_the_idle_timeout(
    make_backends: Any, start_powerlb: Any, http: Any
) -> None:
    (a,) = make_backends(1)
    a.routes[b"/hung"] = hang_after(b"")
    lb = start_powerlb([a], idle_timeout="300ms", **PLAIN)
    status, body, elapsed = await timed_get(http, lb.url + "/hung")
    assert status == 504
    assert b"backend sent nothing for 0.3 s mid-response" in body
    assert 0.25 <= elapsed < 3.0


@pytest_twisted.ensureDeferred
async def test_connection_limit_queues_the_excess_and_serves_everyone(
    make_backends: Any, start_powerlb: Any, http: Any
) -> None:
    (a,) = make_backends(1)
    slow = a.routes[b"/slow"] = Slow(0.3)
    lb = start_powerlb([a], backend_max_connections=2, backend_queue_timeout="3s", **PLAIN)
    client = lb.service.clients[lb.service.backends[0]]
    start = time.monotonic()
    pending = [defer.ensureDeferred(timed_get(http, f"{lb.url}/slow?{i}")) for i in range(5)]
    await wait_for(lambda: client.queued > 0)
    assert client.open_connections <= 2
    results: List[Tuple[int, bytes, float]] = await defer.gatherResults(pending)
    assert [(status, body) for status, body, _ in results] == [(200, b"slow answer")] * 5
    assert slow.peak == 2
    assert a.connections_used() == 2
    assert 0.85 <= time.monotonic() - start < 3.0  # three rounds of two, none waited out the queue
    assert client.queued == 0


@pytest_twisted.ensureDeferred
async def test_queue_timeout_answers_503_before_the_backend_would(
    make_backends: Any, start_powerlb: Any, http: Any
) -> None:
    (a,) = make_backends(1)
    a.routes[b"/slow"] = Slow(1.5)
    lb = start_powerlb([a], backend_max_connections=1, backend_queue_timeout="200ms", **PLAIN)
    results = await defer.gatherResults(
        [defer.ensureDeferred(timed_get(http, f"{lb.url}/slow?{i}")) for i in range(3)]
    )
    (ok_status, _, ok_elapsed), *refused = sorted(results)
    assert ok_status == 200 and ok_elapsed >= 1.45
    for status, body, elapsed in refused:
        assert status == 503
        assert b"backend queue timeout (1 connections busy)" in body
        assert 0.15 <= elapsed < 1.2
    assert a.served() == 1
