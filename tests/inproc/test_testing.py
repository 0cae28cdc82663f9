"""powerlb.testing works as documented: its docstring example, the fakes' scripts, and the test backend."""

from __future__ import annotations

import doctest
import json
import subprocess
import sys
from typing import List

import pytest
import pytest_twisted
import treq
from twisted.internet.task import Clock
from twisted.web.client import ResponseFailed
from zope.interface.verify import verifyObject

import powerlb.testing
from powerlb.errors import UpstreamError, UpstreamTimeout
from powerlb.interfaces import IResponseSink
from powerlb.testing import FakeUpstream, RecordingSink
from tests.support import clean_env
from tests.support.inproc import wait_for


def test_the_module_docstring_example_runs() -> None:
    result = doctest.testmod(powerlb.testing, optionflags=doctest.ELLIPSIS)
    assert result.attempted >= 10
    assert result.failed == 0


def test_it_needs_only_what_powerlb_installs_and_installs_no_reactor() -> None:
    """Shipped in the wheel: importing it must not need the test extras (pytest, hypothesis)."""
    code = (
        "import sys\n"
        "sys.modules['pytest'] = sys.modules['hypothesis'] = None\n"
        "import powerlb.testing\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'importing installed the global reactor'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=clean_env()
    )
    assert done.returncode == 0, done.stderr


# --- RecordingSink ------------------------------------------------------------------------------


def test_recording_sink_records_every_event_in_order() -> None:
    sink = RecordingSink()
    assert verifyObject(IResponseSink, sink)
    sink.interim_received(103, b"Early Hints", [(b"link", b"</a.css>; rel=preload")])
    sink.head_received(200, b"OK", [(b"content-type", b"text/plain")])
    sink.body_received(b"he")
    sink.body_received(b"llo")
    assert not sink.done
    sink.response_ended()
    assert sink.events == [
        ("interim", 103, b"Early Hints", [(b"link", b"</a.css>; rel=preload")]),
        ("head", 200, b"OK", [(b"content-type", b"text/plain")]),
        ("body", b"he"),
        ("body", b"llo"),
        ("end",),
    ]
    assert sink.interims == [(103, [(b"link", b"</a.css>; rel=preload")])]
    assert (sink.status, sink.reason, sink.header(b"content-type"), sink.body) == (
        200,
        b"OK",
        b"text/plain",
        b"hello",
    )
    assert sink.done and sink.ended and sink.failure is None


def test_recording_sink_rejects_events_the_interface_forbids() -> None:
    sink = RecordingSink()
    sink.head_received(200, b"", [])
    with pytest.raises(AssertionError, match="second response head"):
        sink.head_received(200, b"", [])
    error = UpstreamError("gone")
    sink.request_failed(error)
    assert sink.failure is error
    with pytest.raises(AssertionError, match="after the response was over"):
        sink.response_ended()


# --- FakeUpstream -------------------------------------------------------------------------------


def ask(upstream: FakeUpstream, target: bytes = b"/") -> RecordingSink:
    sink = RecordingSink()
    upstream.request(b"GET", target, [(b"host", b"h")], b"", sink, idempotent=True)
    return sink


def test_scripted_replies_come_in_order_on_the_clock_and_then_requests_are_held() -> None:
    clock = Clock()
    upstream = FakeUpstream(clock)
    upstream.answer(200, body=b"one", times=2)
    upstream.fail("timeout", delay=5)
    sinks = [ask(upstream, b"/%d" % n) for n in range(4)]
    assert all(sink.events == [] for sink in sinks)  # never before request() returns
    clock.advance(0)
    assert [s.body for s in sinks[:2]] == [b"one", b"one"]
    assert not sinks[2].done
    clock.advance(5)
    assert isinstance(sinks[2].failure, UpstreamTimeout)
    assert sinks[2].failure.timeout_kind == "response"
    assert not sinks[3].done  # nothing scripted was left: held
    assert [e.target for e in upstream.active] == [b"/3"]
    assert upstream.requests[2].response_time == 0.0  # no head came


def test_a_reply_for_every_request_and_a_held_one_driven_by_hand() -> None:
    clock = Clock()
    upstream = FakeUpstream(clock)
    upstream.hold()
    upstream.answer(204, times=None)
    held, *answered = [ask(upstream) for _ in range(3)]
    clock.advance(0)
    assert [s.status for s in answered] == [204, 204]

    exchange = upstream.requests[0]
    clock.advance(2)
    exchange.send_interim(100)
    exchange.send_head(200, [(b"transfer-encoding", b"chunked")])
    exchange.send_body(b"a")
    exchange.fail(UpstreamError("cut"))
    assert [event[0] for event in held.events] == ["interim", "head", "body", "failed"]
    assert held.failure.reason == "cut"
    assert exchange.response_time == 2.0
    assert not exchange.active


def test_respond_frames_the_body_unless_told() -> None:
    upstream = FakeUpstream()
    sinks = [ask(upstream) for _ in range(2)]
    upstream.requests[0].respond(200, body=[b"ab", b"c"])
    upstream.requests[1].respond(200, [(b"transfer-encoding", b"chunked")], b"abc", cut="reset")
    assert sinks[0].events == [
        ("head", 200, b"", [(b"content-length", b"3")]),
        ("body", b"ab"),
        ("body", b"c"),
        ("end",),
    ]
    assert sinks[1].headers == [(b"transfer-encoding", b"chunked")]
    assert sinks[1].failure.status == 502


def test_bad_scripts_are_refused_when_written() -> None:
    upstream = FakeUpstream()
    with pytest.raises(ValueError, match="unknown failure 'nope': one of busy, connect-timeout"):
        upstream.fail("nope")
    with pytest.raises(ValueError, match="times must be at least 1"):
        upstream.answer(times=0)


# --- TestBackend ----------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_test_backend_serves_scripted_routes_and_records_requests(make_backends, http):
    (a,) = make_backends(1)
    a.answer(b"/teapot", 418, b"short and stout", [(b"x-kind", b"teapot")])
    a.answer(b"/later", 200, b"late", delay=0.05)

    teapot = await http.get(a.url + "/teapot", headers={b"x-test": [b"1"]})
    assert teapot.code == 418
    assert teapot.headers.getRawHeaders(b"x-kind") == [b"teapot"]
    assert teapot.headers.getRawHeaders(b"x-backend") == [b"a"]
    assert await treq.content(teapot) == b"short and stout"
    later = await http.get(a.url + "/later")
    assert await treq.content(later) == b"late"
    other = await http.post(a.url + "/any?q=1", data=b"payload")
    assert json.loads(await treq.content(other)) == {"backend": "a", "uri": "/any?q=1"}

    assert [(r.method, r.uri, r.body) for r in a.requests] == [
        (b"GET", b"/teapot", b""),
        (b"GET", b"/later", b""),
        (b"POST", b"/any?q=1", b"payload"),
    ]
    assert a.requests[0].header(b"x-test") == [b"1"]
    assert a.served() == 3
    assert a.connections_used() == 1  # the client's pool kept the connection


@pytest_twisted.ensureDeferred
async def test_test_backend_hangs_and_cuts_responses_mid_body(make_backends, http):
    (a,) = make_backends(1)
    a.hang(b"/silent", b"part", length=10)
    a.cut(b"/cut", b"part", length=10)

    cut = await http.get(a.url + "/cut")
    assert cut.length == 10
    with pytest.raises(ResponseFailed):
        await treq.content(cut)

    silent = await http.get(a.url + "/silent")
    received: List[bytes] = []
    body = treq.collect(silent, received.append)
    await wait_for(lambda: received == [b"part"])
    assert not body.called  # the rest never comes
    await a.stop()
    with pytest.raises(ResponseFailed):
        await body
