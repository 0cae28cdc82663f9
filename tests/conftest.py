"""Shared fixtures: real backends and real powerlb instances on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

import powerlb
from tests.support import start_demo_backends

Handler = Callable[[Request], Any]


class RecordedRequest:
    """What a test backend saw of one request."""

    def __init__(self, request: Request) -> None:
        self.method: bytes = request.method
        self.uri: bytes = request.uri
        self.headers = [
            (name.lower(), value)
            for name, values in request.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        self.body: bytes = request.content.read()
        self.connection = id(request.channel)

    def header(self, name: bytes) -> List[bytes]:
        return [v for k, v in self.headers if k == name]


class _Routes(Resource):
    isLeaf = True

    def __init__(self, backend: TestBackend) -> None:
        super().__init__()
        self.backend = backend

    def render(self, request: Request) -> Any:
        backend = self.backend
        backend.requests.append(RecordedRequest(request))
        request.content.seek(0)
        request.setHeader(b"x-backend", backend.name.encode())
        handler = backend.routes.get(request.path, backend.default)
        return handler(request)


class _CountingSite(Site):
    def __init__(self, backend: TestBackend) -> None:
        super().__init__(_Routes(backend), reactor=reactor)
        self.noisy = False
        self.backend = backend
        self.channels: List[Any] = []

    def buildProtocol(self, addr: Any) -> Any:
        self.backend.connections += 1
        channel = super().buildProtocol(addr)
        self.channels.append(channel)
        return channel

    def log(self, request: Any) -> None:
        pass


class TestBackend:
    """A real HTTP backend on 127.0.0.1 that records requests; routes are set per test."""

    __test__ = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.requests: List[RecordedRequest] = []
        self.connections = 0
        self.routes: Dict[bytes, Handler] = {b"/health": lambda r: b"ok\n"}
        self.site = _CountingSite(self)
        self.port: Any = None
        self.port_number = 0

    def default(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps({"backend": self.name, "uri": request.uri.decode()}).encode()

    def start(self, port_number: int = 0) -> TestBackend:
        self.port = reactor.listenTCP(port_number, self.site, interface="127.0.0.1")
        self.port_number = self.port.getHost().port
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port_number}"

    def stop(self) -> defer.Deferred:
        """Stop listening and drop every open connection (a crashed backend)."""
        port, self.port = self.port, None
        d = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        for channel in self.site.channels:
            # twisted.web wraps each HTTPChannel (to switch to HTTP/2): the transport is the inner one's
            transport = getattr(getattr(channel, "_channel", channel), "transport", None)
            if transport is not None and transport.connected:
                transport.abortConnection()
        return d

    def connections_used(self) -> int:
        """Distinct connections that carried requests other than health checks."""
        return len({r.connection for r in self.requests if r.uri != b"/health"})

    def served(self) -> int:
        """Requests served, not counting health checks."""
        return sum(1 for r in self.requests if r.uri != b"/health")


@pytest.fixture
def make_backends() -> Any:
    """``make_backends(n)`` starts n recording backends named a, b, c, ...; stopped after the test."""
    started: List[TestBackend] = []

    def make(n: int) -> List[TestBackend]:
        out = []
        for _ in range(n):
            backend = TestBackend(chr(ord("a") + len(started)))
            started.append(backend.start())
            out.append(backend)
        return out

    yield make
    for backend in started:
        pytest_twisted.blockon(backend.stop())


class Running:
    """A started powerlb instance and its address."""

    def __init__(self, service: Any, port: int, admin_port: Optional[int]) -> None:
        self.service = service
        self.port = port
        self.admin_port = admin_port
        self.url = f"http://127.0.0.1:{port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}" if admin_port else None


@pytest.fixture
def start_powerlb() -> Any:
    """``start_powerlb(backends, **settings)`` runs a real powerlb on 127.0.0.1:0, stopped after the test.

    ``backends`` are TestBackends or backend URL strings; settings use the YAML keys.
    """
    services: List[Any] = []

    def start(backends: List[Any], **settings: Any) -> Running:
        config: Dict[str, Any] = {
            "listen": "tcp:0:interface=127.0.0.1",
            "backends": [b if isinstance(b, str) else b.url for b in backends],
            "health-interval": 60,
        }
        config.update({k.replace("_", "-"): v for k, v in settings.items()})
        service = powerlb.makeService(config)
        service.startService()
        services.append(service)
        port = service.proxy_listener.port.getHost().port
        admin_port = None
        if service.admin_listener is not None:
            admin_port = service.admin_listener.port.getHost().port
        return Running(service, port, admin_port)

    yield start
    for service in services:
        pytest_twisted.blockon(service.stopService())


@pytest.fixture
def http() -> Any:
    """A treq client with its own connection pool, closed after the test."""
    pool = HTTPConnectionPool(reactor, persistent=True)
    client = treq.client.HTTPClient(Agent(reactor, pool=pool))
    yield client
    pytest_twisted.blockon(pool.closeCachedConnections())


@pytest.fixture
def demo_backends(tmp_path: Path) -> Any:
    """``demo_backends(n)`` starts n demo backends (``python -m powerlb.demo``) in one process
    and returns their ports; the process is stopped by PID after the test."""
    processes: List[Any] = []

    def start(n: int) -> List[int]:
        process, ports = start_demo_backends(tmp_path, n)
        processes.append(process)
        return ports

    yield start
    for process in processes:
        process.stop()


def sleep(seconds: float) -> defer.Deferred:
    """A Deferred that fires after ``seconds`` on the real reactor."""
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


async def wait_for(condition: Callable[[], Any], timeout: float = 5.0) -> None:
    """Wait on the real reactor until ``condition()`` holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await sleep(0.01)
