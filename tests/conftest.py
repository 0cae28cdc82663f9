"""Shared fixtures: real backends and real powerlb instances on 127.0.0.1 ephemeral ports."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.logger import formatEvent, globalLogPublisher
from twisted.web.client import Agent, HTTPConnectionPool

import powerlb
from powerlb.testing import TestBackend
from tests.support import start_demo_backends
from tests.support.inproc import Running
from tests.support.redis import redis_server  # noqa: F401 - the fixture, for tests to ask for


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


@pytest.fixture
def logged() -> Iterator[List[str]]:
    """Formatted Twisted log lines emitted during the test."""
    lines: List[str] = []

    def observe(event: Dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)
