"""Latency of the Redis tier (README "Running a cluster"), as markdown rows on stdout.

    .venv/bin/python bench/redis_tier.py [--requests 2000]

Starts redis-server, one demo backend (``python -m powerlb.demo``) and three powerlb on
127.0.0.1: A and B sharing the Redis, C without one. Every row sends ``--requests``
sequential GETs on one keep-alive connection and reports p50/p99:

* hits: a local hit (A, second pass) beside a hit from the Redis tier (A's first pass over
  URLs B filled);
* misses (unique URLs, each a Redis look-up on A): without Redis (C), Redis up, Redis hung
  (SIGSTOP: every look-up waits redis-timeout) and Redis down (killed). With Redis hung or
  down, p99 should stay within redis-timeout of the row without Redis.

Every process is stopped by its PID at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Sequence

HOST = "127.0.0.1"
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing answers on port {port}")


def start(args: Sequence[str], log: Path, port: int) -> subprocess.Popen:
    with open(log, "wb") as out:
        process = subprocess.Popen(list(args), stdout=out, stderr=subprocess.STDOUT)
    wait_port(port)
    return process


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.kill(process.pid, signal.SIGCONT)  # a stopped process must run to take SIGTERM
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(5)


def timed(port: int, paths: Sequence[str]) -> List[float]:
    """Milliseconds per GET of each path, sequential on one connection (all must be 200)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    out = []
    for path in paths:
        began = time.perf_counter()
        conn.request("GET", path, headers={"Host": "bench.example"})
        response = conn.getresponse()
        response.read()
        out.append((time.perf_counter() - began) * 1000)
        assert response.status == 200, (path, response.status)
    conn.close()
    return out


def row(name: str, times: List[float]) -> str:
    cuts = statistics.quantiles(times, n=100)
    return f"| {name} | {statistics.median(times):.2f} | {cuts[98]:.2f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--redis-timeout", default="50ms")
    options = parser.parse_args()
    n = options.requests
    work = Path(tempfile.mkdtemp(prefix="powerlb-redis-bench-"))
    redis_port, backend_port = free_port(), free_port()
    processes: List[subprocess.Popen] = []
    try:
        redis = start(
            [
                shutil.which("redis-server") or "/usr/bin/redis-server",
                "--bind",
                HOST,
                "--port",
                str(redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            work / "redis.log",
            redis_port,
        )
        processes.append(redis)
        processes.append(
            start(
                [sys.executable, "-m", "powerlb.demo", "--ports", str(backend_port)],
                work / "demo.log",
                backend_port,
            )
        )
        ports = {}
        for name, extra in (
            ("A", ["--redis", f"redis://{HOST}:{redis_port}/0", "--redis-timeout", options.redis_timeout]),
            ("B", ["--redis", f"redis://{HOST}:{redis_port}/0"]),
            ("C", []),
        ):
            ports[name] = free_port()
            args = [
                str(VENV_BIN / "twistd"),
                "-n",
                "--pidfile=",
                "powerlb",
                "--listen",
                f"tcp:{ports[name]}:interface={HOST}",
                "--backend",
                f"http://{HOST}:{backend_port}",
                *extra,
            ]
            processes.append(start(args, work / f"powerlb-{name}.log", ports[name]))
        time.sleep(1)  # A and B connect to Redis
        cached: Callable[[str], List[str]] = lambda tag: [f"/cached?{tag}={i}" for i in range(n)]  # noqa: E731
        fresh: Callable[[str], List[str]] = lambda tag: [f"/?{tag}={i}" for i in range(n)]  # noqa: E731
        timed(ports["B"], cached("h"))
        time.sleep(0.5)  # B's write-through lands
        rows = [row("hit from the Redis tier (A, filled through B)", timed(ports["A"], cached("h")))]
        rows.append(row("local hit (A)", timed(ports["A"], cached("h"))))
        rows.append(row("miss, no Redis (C)", timed(ports["C"], fresh("c"))))
        rows.append(row("miss, Redis up (A)", timed(ports["A"], fresh("u"))))
        os.kill(redis.pid, signal.SIGSTOP)
        rows.append(
            row(f"miss, Redis hung (A, redis-timeout {options.redis_timeout})", timed(ports["A"], fresh("s")))
        )
        stop(redis)
        rows.append(row("miss, Redis down (A)", timed(ports["A"], fresh("d"))))
        print(f"| {n} sequential GETs, one connection | p50 ms | p99 ms |\n|---|--:|--:|")
        print("\n".join(rows))
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
