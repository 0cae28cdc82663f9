"""A real ``redis-server`` (Debian's, /usr/bin/redis-server) on 127.0.0.1 at an ephemeral port.

tests/conftest.py registers the ``redis_server`` fixture: a test asks for it by name. The
server keeps nothing on disk, runs from the test's tmp_path and is stopped by its PID;
:meth:`RedisServer.stop` and :meth:`RedisServer.start` take it down and bring it back on the
same port mid-test, :meth:`RedisServer.pause` and :meth:`RedisServer.resume` hang it and let
it go on. A test may start more: a replica (``RedisServer(tmp_path, "--replicaof", ...)``) and a
:class:`Sentinel` watching a master (``redis-server --sentinel``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
from pathlib import Path
from typing import Any, List, Optional

import pytest

from tests.support import HOST, Process, free_port, wait_until

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def call(port: int, *words: str) -> bytes:
    """The raw reply of a Redis (or Sentinel) on ``port`` to one inline command (blocking; for
    synchronous waits; ``words`` without spaces)."""
    with socket.create_connection((HOST, port), timeout=1.0) as sock:
        sock.sendall(" ".join(words).encode() + b"\r\n")
        return sock.recv(4096)


def ping(port: int) -> bool:
    """Whether a Redis on ``port`` answers PING."""
    return call(port, "PING").startswith(b"+PONG")


class RedisServer:
    """One redis-server process on ``port``, restartable on the same port."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://{HOST}:{self.port}/0"
        self.extra = extra
        self.process: Optional[Process] = None

    def start(self) -> RedisServer:
        args = [REDIS_SERVER, "--bind", HOST, "--port", str(self.port), "--save", "", "--appendonly", "no"]
        args += self.extra
        self.process = Process(args, self.directory / f"redis-{self.port}.log", self.directory)
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


class Sentinel:
    """A ``redis-server --sentinel`` on 127.0.0.1 watching ``master`` under ``name``, quick to
    fail over; its config file (which Sentinel rewrites) lives in ``directory``."""

    def __init__(self, directory: Path, master: RedisServer, name: str) -> None:
        self.directory = directory
        self.master = master
        self.name = name
        self.port = free_port()
        self.process: Optional[Process] = None

    def start(self) -> Sentinel:
        config = self.directory / f"sentinel-{self.port}.conf"
        config.write_text(
            f"port {self.port}\nbind {HOST}\ndir {self.directory}\n"
            f"sentinel monitor {self.name} {HOST} {self.master.port} 1\n"
            f"sentinel down-after-milliseconds {self.name} 1000\n"
            f"sentinel failover-timeout {self.name} 5000\n"
        )
        args = [REDIS_SERVER, str(config), "--sentinel"]
        self.process = Process(args, self.directory / f"sentinel-{self.port}.log", self.directory)
        wait_until(lambda: ping(self.port), f"redis sentinel on port {self.port}")
        return self

    def master_port(self) -> int:
        """The port of the master Sentinel names now."""
        reply: List[bytes] = call(self.port, "SENTINEL", "get-master-addr-by-name", self.name).split(b"\r\n")
        return int(reply[4])

    def fail_over(self, to: RedisServer) -> None:
        """Make ``to`` (a replica the Sentinel knows) the master, and wait until it says so."""
        wait_until(
            lambda: str(to.port).encode() in call(self.port, "SENTINEL", "replicas", self.name), "replica"
        )
        wait_until(lambda: call(self.port, "SENTINEL", "failover", self.name).startswith(b"+OK"), "failover")
        wait_until(lambda: self.master_port() == to.port, f"{to.port} promoted")

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
