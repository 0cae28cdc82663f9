"""WebSocket through powerlb for real: a ``websockets`` server as the backend, a ``websockets`` client.

The backend and the client are blocking (``websockets.sync``) and run in threads,
while powerlb runs on the test's reactor; the memory test runs powerlb as a
``twistd`` process so that its resident memory is its own.
"""

from __future__ import annotations

import os
import ssl
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import connect
from websockets.sync.server import ServerConnection, serve

from tests.support import HOST, Process, accepts, clean_env, get, script, start_server, stats
from tests.support.inproc import wait_for
from tests.support.memory import PeakRss, rss_mib
from tests.support.pki import PKI, tls_listen

MIB = 1024 * 1024


class WebSocketBackend:
    """A ``websockets`` server in a thread (over TLS with ``tls``): ``/echo`` echoes, ``/hello`` greets
    first, ``/bye`` closes.

    ``ended`` fires each time a connection's handler is done (the client closed, or it did).
    """

    def __init__(self, tls: Optional[ssl.SSLContext] = None) -> None:
        self.server = serve(self.handle, HOST, 0, max_size=None, ssl=tls)
        self.port = self.server.socket.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://{HOST}:{self.port}"
        self.ended = threading.Semaphore(0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def handle(self, ws: ServerConnection) -> None:
        try:
            path = ws.request.path
            if path == "/hello":
                ws.send("hello from the backend")
            if path == "/bye":
                ws.close(1000, "bye")
                return
            for message in ws:
                ws.send(message)
        except ConnectionClosed:
            pass
        finally:
            self.ended.release()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(5)


@pytest.fixture
def ws_backend() -> Iterator[WebSocketBackend]:
    backend = WebSocketBackend()
    yield backend
    backend.stop()


def close(ws: Any, code: int, reason: str) -> None:
    """Close a client WebSocket. PyPy 3.9's ``Thread.join`` (which websockets' close calls for its
    reading thread) can raise "cannot release un-acquired lock" for a thread that has just ended: a
    race inside PyPy's threading, after the close frame went out; what follows checks the close."""
    try:
        ws.close(code, reason)
    except RuntimeError as err:
        if "un-acquired lock" not in str(err):
            raise


def in_thread(scenario: Callable[[], Any]) -> Any:
    """Run a blocking client ``scenario`` in a thread while the reactor serves powerlb."""
    return threads.deferToThread(scenario)


def ws_url(lb: Any, path: str) -> str:
    return f"ws://{HOST}:{lb.port}{path}"


def tunnels_of(lb: Any) -> Dict[str, int]:
    return lb.service.stats()["tunnels"]


@pytest_twisted.ensureDeferred
async def test_messages_pass_both_ways(start_powerlb, ws_backend):
    lb = start_powerlb([ws_backend])

    def scenario() -> List[Any]:
        with connect(ws_url(lb, "/hello"), open_timeout=5, close_timeout=5, compression=None) as ws:
            got = [ws.recv(timeout=5)]
            for message in ("text", b"\x00\xffbinary", "é" * 1000):
                ws.send(message)
                got.append(ws.recv(timeout=5))
            assert threads.blockingCallFromThread(reactor, tunnels_of, lb)["open"] == 1
            assert threads.blockingCallFromThread(reactor, lambda: lb.service.backends[0].in_flight) == 1
            return got

    got = await in_thread(scenario)
    assert got == ["hello from the backend", "text", b"\x00\xffbinary", "é" * 1000]
    await wait_for(lambda: tunnels_of(lb)["open"] == 0)
    tunnels = tunnels_of(lb)
    assert tunnels["total"] == 1
    assert tunnels["bytes_upstream"] > 1000 and tunnels["bytes_downstream"] > 1000
    backend = lb.service.backends[0]
    await wait_for(lambda: backend.in_flight == 0)
    assert backend.requests == 1
    assert lb.service.outcomes.snapshot()[ws_backend.url] == {"1xx": {"bypass": 1}}  # counted as it switched


@pytest_twisted.ensureDeferred
async def test_a_client_close_reaches_the_backend(start_powerlb, ws_backend):
    lb = start_powerlb([ws_backend])

    def scenario() -> bool:
        with connect(ws_url(lb, "/echo"), open_timeout=5, close_timeout=5) as ws:
            ws.send("one")
            assert ws.recv(timeout=5) == "one"
            close(ws, 1000, "done")
        return ws_backend.ended.acquire(timeout=5)

    assert await in_thread(scenario)
    await wait_for(lambda: tunnels_of(lb)["open"] == 0)
    await wait_for(lambda: lb.service.backends[0].in_flight == 0)


@pytest_twisted.ensureDeferred
async def test_a_backend_close_reaches_the_client(start_powerlb, ws_backend):
    lb = start_powerlb([ws_backend])

    def scenario() -> Any:
        with connect(ws_url(lb, "/bye"), open_timeout=5, close_timeout=5) as ws:
            with pytest.raises(ConnectionClosedOK) as closed:
                ws.recv(timeout=5)
            return closed.value.rcvd.code, closed.value.rcvd.reason

    assert await in_thread(scenario) == (1000, "bye")
    await wait_for(lambda: tunnels_of(lb)["open"] == 0)


@pytest_twisted.ensureDeferred
async def test_an_idle_tunnel_is_closed(start_powerlb, ws_backend):
    lb = start_powerlb([ws_backend], tunnel_idle_timeout="300ms")

    def scenario() -> None:
        with connect(ws_url(lb, "/echo"), open_timeout=5, close_timeout=1) as ws:
            ws.send("still here")
            assert ws.recv(timeout=5) == "still here"
            with pytest.raises(ConnectionClosed):
                ws.recv(timeout=10)  # nothing to receive: powerlb cuts the silent tunnel

    await in_thread(scenario)
    await wait_for(lambda: tunnels_of(lb)["open"] == 0)
    assert await in_thread(lambda: ws_backend.ended.acquire(timeout=5))


@pytest_twisted.ensureDeferred
async def test_an_upgrade_a_backend_refuses_is_relayed_as_usual(start_powerlb, make_backends):
    (plain,) = make_backends(1)
    lb = start_powerlb([plain], admin="tcp:0:interface=127.0.0.1")

    def scenario() -> Any:
        with pytest.raises(Exception) as refused:
            connect(ws_url(lb, "/chat"), open_timeout=5)
        return refused.value

    error = await in_thread(scenario)
    assert error.response.status_code == 200  # the plain backend answered: no switch, relayed
    request = plain.requests[-1]
    assert request.header(b"upgrade") == [b"websocket"]
    assert request.header(b"connection") == [b"upgrade"]
    assert lb.service.counters.cache_bypass == 1  # never cached
    assert tunnels_of(lb)["total"] == 0
    metrics = await in_thread(lambda: get(lb.admin_port, "/metrics").body.decode())
    assert "powerlb_tunnels_open 0.0" in metrics
    assert "powerlb_tunnels_total 0.0" in metrics


@pytest_twisted.ensureDeferred
async def test_wss_through_a_tls_listener_to_an_https_backend(start_powerlb, tmp_path):
    pki = PKI(tmp_path)
    key, cert = pki.issue("backend", ips=[HOST])
    backend_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    backend_tls.load_cert_chain(str(cert), str(key))
    backend = WebSocketBackend(backend_tls)
    try:
        lb = start_powerlb([backend], listen=tls_listen(pki), backend_ca_file=str(pki.ca_file))
        client_tls = ssl.create_default_context(cafile=str(pki.ca_file))

        def scenario() -> Any:
            with connect(f"wss://{HOST}:{lb.port}/hello", ssl=client_tls, open_timeout=5) as ws:
                greeting = ws.recv(timeout=5)
                ws.send(b"over TLS both ways")
                return greeting, ws.recv(timeout=5)

        assert await in_thread(scenario) == ("hello from the backend", b"over TLS both ways")
        await wait_for(lambda: tunnels_of(lb)["open"] == 0)
    finally:
        await in_thread(backend.stop)


# --- 10 MiB each way through powerlb as a process ------------------------------------------


@pytest.fixture
def lb_process(tmp_path: Path, ws_backend: WebSocketBackend) -> Iterator[List[int]]:
    def make(ports: List[int]) -> Process:
        args = [script("twistd"), "-n", "--pidfile=", "powerlb", "--health-interval", "5"]
        args += [
            "--listen",
            f"tcp:{ports[0]}:interface={HOST}",
            "--admin",
            f"tcp:{ports[1]}:interface={HOST}",
        ]
        args += ["--backend", ws_backend.url]
        return Process(args, tmp_path / "powerlb.log", cwd=tmp_path, env=clean_env())

    lb, ports = start_server(make, 2, lambda ports: accepts(ports[0]) and stats(ports[1]))
    try:
        yield [*ports, lb.pid]
    finally:
        lb.stop()


def test_ten_mib_each_way_with_bounded_memory(lb_process: List[int]) -> None:
    lb_port, admin_port, lb_pid = lb_process
    message = os.urandom(10 * MIB)
    time.sleep(0.5)
    idle = rss_mib(lb_pid)
    sampler = PeakRss(lb_pid)
    try:
        url = f"ws://{HOST}:{lb_port}/echo"
        with connect(url, max_size=None, compression=None, open_timeout=5, close_timeout=5) as ws:
            for _ in range(3):
                ws.send(message)
                assert ws.recv(timeout=60) == message
    finally:
        peak = sampler.stop()
    print(
        f"\n10 MiB each way: resident memory {idle:.1f} MiB idle, peak growth {peak - idle:.1f} MiB",
        file=sys.stderr,
    )
    assert peak - idle < 40, f"resident memory grew by {peak - idle:.1f} MiB (idle {idle:.1f} MiB)"
    figures = stats(admin_port)["tunnels"]
    assert figures["total"] == 1
    assert figures["bytes_upstream"] >= 30 * MIB and figures["bytes_downstream"] >= 30 * MIB
