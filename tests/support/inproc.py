"""Helpers for tests on the test process's reactor: waits, HTTP clients, backend routes.

They run inside ``pytest_twisted.ensureDeferred`` tests (real sockets on 127.0.0.1);
the fixtures that start backends and powerlb instances are in tests/conftest.py.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, protocol, reactor
from twisted.internet.task import deferLater
from twisted.web.server import NOT_DONE_YET, Request

from powerlb.config import config_from_mapping

#: An admin listener on an ephemeral port, and the token the tests give it.
ADMIN = "tcp:0:interface=127.0.0.1"
TOKEN = "s3cret"


class Running:
    """A started powerlb instance and its address."""

    def __init__(self, service: Any, port: int, admin_port: Optional[int]) -> None:
        self.service = service
        self.port = port
        self.admin_port = admin_port
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}" if admin_port else None


def sleep(seconds: float) -> defer.Deferred:
    """A Deferred that fires after ``seconds`` on the real reactor."""
    return deferLater(reactor, seconds, lambda: None)


async def wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait on the real reactor until ``condition()`` holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await sleep(0.01)


def origin(body: bytes = b"body", status: int = 200, **headers: bytes) -> Any:
    """A route answering ``status``, ``headers`` (``cache_control=`` style names) and ``body`` + a serial."""
    served: List[int] = []

    def respond(request: Any) -> bytes:
        served.append(1)
        request.setResponseCode(status)
        for name, value in headers.items():
            request.setHeader(name.replace("_", "-").encode(), value)
        return body + b" #%d" % len(served)

    return respond


async def fetch(
    http: Any, url: str, headers: Optional[Mapping[bytes, Any]] = None, method: str = "GET", **named: bytes
) -> Any:
    """``method`` ``url`` with the treq client ``http``, sending ``headers`` and the ``named`` ones
    (``cache_control=`` style names); the response, read whole: treq's with ``.body``, ``.x_cache``,
    ``.backend`` (X-Backend, "-" if none), ``.set_cookie`` (every value) and ``.header(name)``."""
    sent: Dict[bytes, Any] = dict(headers or {})
    sent.update({name.replace("_", "-").encode(): [value] for name, value in named.items()})
    response = await http.request(method, url, headers=sent)
    response.body = await response.content()
    values = response.headers.getRawHeaders
    response.header = lambda name: (values(name) or [None])[0]
    response.x_cache = response.header(b"x-cache") or b""
    response.backend = (response.header(b"x-backend") or b"-").decode()
    response.set_cookie = values(b"set-cookie", [])
    return response


async def backends_hit(http: Any, url: str, n: int, path: str = "/") -> List[str]:
    """The X-Backend of ``n`` sequential GET ``path`` through powerlb at ``url``."""
    return [(await fetch(http, url + path)).backend for _ in range(n)]


def slow_route(seconds: float) -> Any:
    """A backend route answering ``slow`` after ``seconds``."""

    def handler(request: Any) -> Any:
        def answer() -> None:
            if not request._disconnected:
                request.write(b"slow")
                request.finish()

        reactor.callLater(seconds, answer)
        return NOT_DONE_YET

    return handler


def reloaded(running: Any, **settings: Any) -> Any:
    """The running service's configuration with ``settings`` (YAML keys) changed."""
    base = {
        "listen": "tcp:0:interface=127.0.0.1",
        "health-interval": 60,
        "backends": [spec.url + f",weight={spec.weight}" for spec in running.service.config.backends],
    }
    base.update({k.replace("_", "-"): v for k, v in settings.items()})
    return config_from_mapping(base)


class RawClient(protocol.Protocol):
    """Sends pieces of bytes (with pauses between them) and collects everything until the close."""

    def __init__(self, pieces: Sequence[bytes], pause: float) -> None:
        self.pieces = list(pieces)
        self.pause = pause
        self.received: List[bytes] = []
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self._send_next()

    def _send_next(self) -> None:
        if self.pieces and self.transport.connected:
            self.transport.write(self.pieces.pop(0))
            if self.pieces:
                reactor.callLater(self.pause, self._send_next)

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.pieces = []
        self.closed.callback(b"".join(self.received))


async def raw(port: int, *pieces: bytes, pause: float = 0.0, timeout: float = 5.0) -> bytes:
    """Everything the server sent before closing (or cut after ``timeout``)."""
    client = RawClient(pieces, pause)
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port)
    timer = reactor.callLater(timeout, client.transport.abortConnection)
    data = await client.closed
    assert timer.active(), "the server did not close the connection in time"
    timer.cancel()
    return data


def status_of(response: bytes) -> int:
    """The status code of a raw HTTP/1.1 response."""
    return int(response.split(b" ", 2)[1])


def headers_of(response: bytes) -> Tuple[int, Dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.lower()] = value.strip()
    return int(lines[0].split(b" ")[1]), fields, body


class OneResponse(protocol.Protocol):
    """Sends a request, collects ``count`` complete (Content-Length framed) responses, then closes.

    With ``bodiless`` (responses to ``HEAD``) a response ends with its head, whatever its length.
    """

    def __init__(self, data: bytes, count: int = 1, bodiless: bool = False) -> None:
        self.data = data
        self.count = count
        self.bodiless = bodiless
        self.buffer = b""
        self.done: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        responses, rest = [], self.buffer
        while b"\r\n\r\n" in rest:
            head, _, after = rest.partition(b"\r\n\r\n")
            length = (
                0 if self.bodiless else int(headers_of(head + b"\r\n\r\n")[1].get(b"content-length", b"0"))
            )
            if len(after) < length:
                break
            responses.append(head + b"\r\n\r\n" + after[:length])
            rest = after[length:]
        if len(responses) == self.count and not self.done.called:
            self.transport.loseConnection()
            self.done.callback(responses)


async def exchange(port: int, data: bytes, count: int = 1, bodiless: bool = False) -> List[bytes]:
    client = OneResponse(data, count, bodiless)
    await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", port)
    timer = reactor.callLater(5, client.transport.abortConnection)
    responses = await client.done
    timer.cancel()
    return responses


def answer(status: int) -> Callable[[Request], bytes]:
    def handler(request: Request) -> bytes:
        request.setResponseCode(status)
        return b"status %d\n" % status

    return handler


Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


async def scrape(http: Any, lb: Any) -> Samples:
    """GET /metrics, parsed: (sample name, sorted labels) -> value."""
    response = await http.get(lb.admin_url + "/metrics")
    assert response.code == 200
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(await response.text()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples
