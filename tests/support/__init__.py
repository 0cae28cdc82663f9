"""Helpers for tests that run powerlb for real: subprocesses, free ports, blocking HTTP.

Everything here is synchronous and meant for synchronous tests (which pytest-twisted
does not run on the reactor), so blocking sockets and waits are fine. All traffic
goes to 127.0.0.1; every subprocess is bounded in time and ended by its PID.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
HOST = "127.0.0.1"
START_TIMEOUT = 15.0  # seconds a server process may take to answer
STOP_TIMEOUT = 5.0  # seconds between SIGTERM and SIGKILL


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def free_ports(count: int) -> List[int]:
    """``count`` distinct free ports."""
    ports: List[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


def script(name: str) -> str:
    """The console script ``name`` (e.g. twistd) of the interpreter running the tests."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; install the package providing {name!r}")
    return str(path)


def clean_env(**extra: str) -> Dict[str, str]:
    """The environment for subprocesses: unbuffered output, no inherited PYTHONPATH."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Process:
    """A subprocess whose stdout and stderr go to a log file; :meth:`stop` ends it by PID."""

    def __init__(
        self, args: Sequence[str], log: Path, cwd: Path, env: Optional[Dict[str, str]] = None
    ) -> None:
        self.args = list(args)
        self.log = log
        with open(log, "wb") as out:
            self.popen = subprocess.Popen(
                self.args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env
            )
        self.pid = self.popen.pid

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        """The command, exit status and output, for assertion messages."""
        return f"command: {' '.join(self.args)}\nexit status: {self.popen.poll()}\noutput:\n{self.output()}"

    def exited(self) -> bool:
        return self.popen.poll() is not None

    def wait(self, timeout: float) -> int:
        """The exit status; raises subprocess.TimeoutExpired if still running after ``timeout``."""
        return self.popen.wait(timeout)

    def stop(self) -> Optional[int]:
        """SIGTERM, then SIGKILL if still running after STOP_TIMEOUT; the exit status."""
        if self.popen.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                return self.popen.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
        return self.popen.wait(STOP_TIMEOUT)


def wait_until(check: Callable[[], Any], what: str, timeout: float = START_TIMEOUT) -> Any:
    """Poll ``check`` until it returns something true (exceptions count as not yet); return it."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    last: Any = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except (OSError, http.client.HTTPException) as exc:
            last = exc
        else:
            if result:
                return result
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
    raise TimeoutError(f"{what} not ready within {timeout} s (last error: {last!r})")


class Response:
    def __init__(self, status: int, headers: Dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def get(port: int, path: str = "/", timeout: float = 5.0) -> Response:
    """GET http://127.0.0.1:PORT/PATH on a fresh connection."""
    return request(port, "GET", path, timeout=timeout)


def request(
    port: int,
    method: str,
    path: str,
    body: Optional[bytes] = None,
    headers: Optional[Dict[str, str]] = None,
    timeout: float = 5.0,
) -> Response:
    """``method`` http://127.0.0.1:PORT/PATH with ``body`` and ``headers`` on a fresh connection."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body, headers or {})
        resp = conn.getresponse()
        body = resp.read()
        headers = {name.lower(): value for name, value in resp.getheaders()}
        return Response(resp.status, headers, body)
    finally:
        conn.close()


def accepts(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:PORT."""
    with socket.create_connection((HOST, port), timeout=1.0):
        return True


class PortInUse(Exception):
    """A server subprocess could not bind one of its ports (another process took it)."""


def start_server(
    make: Callable[[List[int]], Process], nports: int, ready: Callable[[List[int]], Any], attempts: int = 3
) -> Tuple[Process, List[int]]:
    """Start a server subprocess on fresh free ports and wait until ``ready(ports)``.

    ``make(ports)`` starts the process. If it exits because a port was taken between
    finding and binding it, try again with other ports (up to ``attempts`` times).
    """
    for _ in range(attempts):
        ports = free_ports(nports)
        proc = make(ports)

        def check(proc: Process = proc, ports: List[int] = ports) -> Any:
            if proc.exited():
                raise (
                    PortInUse()
                    if "Address already in use" in proc.output()
                    else AssertionError(f"server exited before answering\n{proc.describe()}")
                )
            return ready(ports)

        try:
            wait_until(check, f"server {proc.args}")
        except PortInUse:
            proc.stop()
            continue
        except BaseException as exc:
            proc.stop()
            if isinstance(exc, TimeoutError):
                raise AssertionError(f"{exc}\n{proc.describe()}") from None
            raise
        return proc, ports
    raise AssertionError(f"could not find free ports in {attempts} attempts")


def start_demo_backends(tmp_path: Path, count: int) -> Tuple[Process, List[int]]:
    """``python -m powerlb.demo`` serving ``count`` backends; ready once all answer /health."""

    def make(ports: List[int]) -> Process:
        args = [sys.executable, "-m", "powerlb.demo", "--ports", ",".join(map(str, ports))]
        return Process(args, tmp_path / "demo.log", cwd=tmp_path, env=clean_env())

    def ready(ports: List[int]) -> bool:
        return all(get(port, "/health").status == 200 for port in ports)

    return start_server(make, count, ready)


def stats(admin_port: int) -> Dict[str, Any]:
    """The JSON of GET /api/v1/stats on the admin port."""
    resp = get(admin_port, "/api/v1/stats")
    assert resp.status == 200, resp.body
    assert resp.headers.get("content-type") == "application/json"
    return resp.json()


def check_weighted_balancer(proxy_port: int, admin_port: int, weights: Dict[int, int]) -> None:
    """Prove a running powerlb (weighted-round-robin over the demo backends ``weights``
    {port: weight}, cache on, admin on) splits by weight, caches /cached and counts it all."""
    total = sum(weights.values())
    rounds = 3
    seen: Dict[int, int] = dict.fromkeys(weights, 0)
    for number in range(rounds * total):
        resp = get(proxy_port, f"/wrr/{number}")
        assert resp.status == 200, resp.body
        backend = int(resp.headers["x-backend"])
        assert resp.json()["backend"] == str(backend)
        assert resp.json()["path"] == f"/wrr/{number}"
        seen[backend] += 1
    assert seen == {port: rounds * weight for port, weight in weights.items()}

    first = get(proxy_port, "/cached")
    second = get(proxy_port, "/cached")
    assert first.status == second.status == 200
    assert first.headers.get("x-cache", "MISS") == "MISS"
    assert second.headers.get("x-cache") == "HIT", second.headers
    assert 0 <= int(second.headers["age"]) <= 30
    assert second.body == first.body  # same "generated at" stamp: not asked again
    seen[int(first.headers["x-backend"])] += 1

    figures = stats(admin_port)
    assert figures["requests"] == rounds * total + 2
    assert figures["errors"] == 0
    by_port = {int(b["url"].rsplit(":", 1)[1]): b for b in figures["backends"]}
    assert {port: b["requests"] for port, b in by_port.items()} == seen
    assert {port: b["weight"] for port, b in by_port.items()} == weights
    assert all(b["healthy"] for b in by_port.values())
    cache = figures["cache"]
    assert cache["enabled"] is True
    assert cache["hits"] == 1
    assert cache["misses"] == rounds * total + 1
    assert cache["entries"] >= 1
    assert cache["max_bytes"] == 64 * 1024 * 1024


def lb_ready(ports: List[int]) -> bool:
    """Ready once the admin API answers (ports[1]) and the proxy port (ports[0]) accepts,
    without sending the proxy a request that would move the balancer."""
    return accepts(ports[0]) and bool(stats(ports[1]))


def twistd(*args: str) -> List[str]:
    """The argv of ``twistd -n --pidfile= ARGS``: the test interpreter's twistd, foreground, no pidfile."""
    return [script("twistd"), "-n", "--pidfile=", *args]


def start_twistd(
    tmp_path: Path,
    args: Callable[[List[int]], Sequence[str]],
    nports: int = 2,
    ready: Callable[[List[int]], Any] = lb_ready,
    env: Optional[Dict[str, str]] = None,
) -> Tuple[Process, List[int]]:
    """``twistd(*args(ports))`` on ``nports`` fresh ports, logging to ``tmp_path/twistd.log``; returned
    once ``ready(ports)`` (by default :func:`lb_ready`: ports are (listen, admin)), to be stopped by PID.

    ``args`` may write files naming the ports (a config for ``-y lb.tac``); ``env`` defaults to
    :func:`clean_env`. Every test that starts twistd goes through here or :func:`start_twistd_powerlb`.
    """

    def make(ports: List[int]) -> Process:
        return Process(twistd(*args(ports)), tmp_path / "twistd.log", cwd=tmp_path, env=env or clean_env())

    return start_server(make, nports, ready)


def start_twistd_powerlb(
    tmp_path: Path,
    backend_ports: Sequence[int],
    *extra: str,
    admin: bool = True,
    ready: Optional[Callable[[List[int]], Any]] = None,
) -> Tuple[Process, List[int]]:
    """``twistd -n powerlb`` in front of ``backend_ports`` on fresh (listen, admin) ports, with ``extra``
    options; returned once ready (by default :func:`lb_ready`), to be stopped by PID.

    ``admin=False`` gives it no admin listener: one port (listen), ready once it accepts.
    """

    def args(ports: List[int]) -> List[str]:
        out = ["powerlb", "--listen", f"tcp:{ports[0]}:interface={HOST}"]
        if admin:
            out += ["--admin", f"tcp:{ports[1]}:interface={HOST}"]
        for port in backend_ports:
            out += ["--backend", f"http://{HOST}:{port}"]
        return [*out, *extra]

    if ready is None:
        ready = lb_ready if admin else lambda ports: accepts(ports[0])
    return start_twistd(tmp_path, args, 2 if admin else 1, ready)
