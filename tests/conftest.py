"""Shared fixtures: real backends and real powerlb instances on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, reactor
from twisted.web.client import Agent, HTTPConnectionPool

import powerlb
from powerlb.testing import TestBackend
from tests.support import start_demo_backends


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
