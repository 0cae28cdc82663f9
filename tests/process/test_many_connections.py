"""Thousands of idle and half-sent client connections do not stop powerlb from serving others."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any, List

import pytest

from tests.support import HOST, get, start_twistd_powerlb

IDLE = 3000


@pytest.mark.heavy
def test_thousands_of_idle_connections_do_not_block_service(tmp_path: Path, demo_backends: Any) -> None:
    (backend,) = demo_backends(1)

    proc, (port,) = start_twistd_powerlb(tmp_path, [backend], "--client-timeout", "30", admin=False)
    idle: List[socket.socket] = []
    try:
        for i in range(IDLE):
            sock = socket.create_connection((HOST, port), timeout=5)
            if i % 2:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never finished
            idle.append(sock)
        started = time.monotonic()
        for _ in range(20):
            assert get(port, "/").status == 200
        elapsed = time.monotonic() - started
        assert elapsed < 5, f"20 requests took {elapsed:.1f} s beside {IDLE} idle connections"
    finally:
        for sock in idle:
            sock.close()
        proc.stop()
    assert "Traceback" not in proc.output()
