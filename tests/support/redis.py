"""A real ``redis-server`` (Debian's, /usr/bin/redis-server) on 127.0.0.1 at an ephemeral port.

tests/conftest.py registers the ``redis_server`` fixture: a test asks for it by name. The
server keeps nothing on disk, runs from the test's tmp_path and is stopped by its PID;
:meth:`RedisServer.stop` and :meth:`RedisServer.start` take it down and bring it back on the
same port mid-test, :meth:`RedisServer.pause` and :meth:`RedisServer.resume` hang it and let
it go on.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path
from typing import Any, Optional

import pytest

from tests.support import HOST, Process, free_port, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def ping(port: int) -> bool:
    """Whether a Redis on ``port`` answers PING (blocking; for synchronous waits)."""
    with socket.create_connection((HOST, port), timeout=1.0) as sock:
        sock.sendall(b"PING\r\n")
        return sock.recv(64).startswith(b"+PONG")


class RedisServer:
    """One redis-server process on ``port``, restartable on the same port."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.process: Optional[Process] = None

    def start(self) -> RedisServer:
        args = [REDIS_SERVER, "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        self.process = Process(args, self.directory / "redis.log", self.directory)
        wait_until(lambda: ping(self.port), f"redis-server on port {self.port}")
        return self

    def pause(self) -> None:
        """Stop the process (SIGSTOP): connections stay open, nothing answers (Redis hung)."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None:
            self.resume()  # a stopped process must run to take SIGTERM
            self.process.stop()
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Any:
    """A started :class:`RedisServer`; stopped after the test."""
    if not Path(REDIS_SERVER).exists():
        pytest.fail(f"{REDIS_SERVER} is missing: apt-get install redis-server (make test does)")
    server = RedisServer(tmp_path).start()
    yield server
    server.stop()
