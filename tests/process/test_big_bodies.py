"""Bodies stream through powerlb in both directions: early forwarding, byte-exact, bounded memory."""

from __future__ import annotations

import hashlib
import re
import socket
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor

from tests.support import HOST, REPO, Process, accepts, clean_env, start_server, start_twistd_powerlb
from tests.support.bigbody_backend import BLOCK, pattern
from tests.support.inproc import RawClient
from tests.support.memory import PeakRss, rss_mib


class HeadFirstBackend(protocol.Protocol):
    """Answers GETs at once; for a POST, reports the head on arrival and answers the body's size."""

    def __init__(self, heads: List[defer.Deferred]) -> None:
        self.heads = heads
        self.buffer = b""
        self.head: Any = None
        self.length = 0
        self.count = 0

    def dataReceived(self, data: bytes) -> None:
        if self.head is None:
            self.buffer += data
            if b"\r\n\r\n" not in self.buffer:
                return
            self.head, _, data = self.buffer.partition(b"\r\n\r\n")
            self.buffer = b""
            if self.head.startswith(b"GET"):
                self.head = None
                self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
                return
            self.length = int(re.search(rb"(?i)content-length: *(\d+)", self.head).group(1))
            self.heads.pop(0).callback(self.head)
        self.count += len(data)
        if self.count >= self.length:
            body = b"%d" % self.count
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
            self.head, self.count = None, 0


@pytest_twisted.ensureDeferred
async def test_request_body_reaches_the_backend_while_the_client_still_sends(start_powerlb):
    heads: List[defer.Deferred] = [defer.Deferred()]
    factory = protocol.Factory.forProtocol(lambda: HeadFirstBackend(heads))
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        lb = start_powerlb([f"http://127.0.0.1:{port.getHost().port}"])
        size = 1024 * 1024
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % size
        client = RawClient([head + b"a" * 100_000], 0)
        await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", lb.port)
        first = heads[0]
        timeout = reactor.callLater(5, first.cancel)
        seen = await first  # the backend has the request while 90% of the body is still unsent
        timeout.cancel()
        assert b"content-length: 1048576" in seen.lower()
        client.transport.write(b"a" * (size - 100_000))
        response = await client.closed
        assert response.startswith(b"HTTP/1.1 200 ")
        assert response.endswith(b"\r\n\r\n1048576")
    finally:
        await port.stopListening()


class EarlyAnswer(protocol.Protocol):
    """Answers as soon as a request head arrives and ignores any body (as nginx's ``return 200``)."""

    def dataReceived(self, data: bytes) -> None:
        if b"\r\n\r\n" in data:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")


@pytest_twisted.ensureDeferred
async def test_backend_answering_before_the_body_does_not_cut_the_upload(start_powerlb):
    """Lingering close: the rest of the upload is read and dropped, then the response ends."""
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(EarlyAnswer), interface="127.0.0.1")
    try:
        lb = start_powerlb([f"http://127.0.0.1:{port.getHost().port}"])
        pieces = [b"u" * 65536] * 64  # 4 MiB, one piece per reactor turn
        head = b"POST /up HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % (
            len(pieces) * 65536
        )
        client = RawClient([head, *pieces], 0.001)
        unsent: List[int] = []
        client.connectionLost = lambda reason: (
            unsent.append(len(client.pieces)),
            RawClient.connectionLost(client, reason),
        )  # type: ignore[method-assign]
        await protocol.ClientCreator(reactor, lambda: client).connectTCP("127.0.0.1", lb.port)
        response = await client.closed
        assert response.startswith(b"HTTP/1.1 200 ")
        assert response.endswith(b"early")
        assert unsent == [0]  # the whole body was sent before powerlb closed
    finally:
        await port.stopListening()


# --- 1 GiB each way, against powerlb as a process --------------------------------------------


def read_response(sock: socket.socket) -> Dict[str, Any]:
    """Status, headers and the body's size and sha256, read from a blocking socket."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, "connection closed before the response head"
        buffer += data
    head, _, rest = buffer.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    digest = hashlib.sha256(rest)
    got = len(rest)
    while got < length:
        data = sock.recv(1 << 20)
        assert data, "connection closed mid-body"
        digest.update(data)
        got += len(data)
    return {"status": int(head.split(b" ")[1]), "bytes": got, "sha256": digest.hexdigest(), "body": rest}


GIB = 1024 * 1024 * 1024


@pytest.fixture
def lb_and_backend(tmp_path: Path) -> Iterator[List[int]]:
    backend, (backend_port,) = start_server(
        lambda ports: Process(
            [sys.executable, str(REPO / "tests" / "support" / "bigbody_backend.py"), str(ports[0])],
            tmp_path / "backend.log",
            cwd=REPO,
            env=clean_env(),
        ),
        1,
        lambda ports: accepts(ports[0]),
    )

    lb, (lb_port,) = start_twistd_powerlb(
        tmp_path, [backend_port], "--max-body", "2GiB", "--health-interval", "5", admin=False
    )
    try:
        yield [lb_port, lb.pid]
    finally:
        lb.stop()
        backend.stop()


@pytest.mark.heavy
def test_one_gib_each_way_byte_exact_with_bounded_memory(lb_and_backend: List[int]) -> None:
    lb_port, lb_pid = lb_and_backend
    time.sleep(0.5)
    idle = rss_mib(lb_pid)
    sampler = PeakRss(lb_pid)
    try:
        with socket.create_connection((HOST, lb_port), timeout=60) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % GIB)
            for _ in range(GIB // len(BLOCK)):
                sock.sendall(BLOCK)
            upload = read_response(sock)
            sock.sendall(b"GET /download?n=%d HTTP/1.1\r\nHost: x\r\n\r\n" % GIB)
            download = read_response(sock)
    finally:
        peak = sampler.stop()
    expected = pattern(GIB).hexdigest()
    assert upload["status"] == 200
    assert upload["body"].decode() == f"{GIB} {expected}"
    assert (download["status"], download["bytes"], download["sha256"]) == (200, GIB, expected)
    print(f"\n1 GiB each way: resident memory {idle:.1f} MiB idle, peak growth {peak - idle:.1f} MiB")
    assert peak - idle < 50, f"resident memory grew by {peak - idle:.1f} MiB (idle {idle:.1f} MiB)"


@pytest.mark.heavy
def test_chunked_upload_is_streamed_and_counted(lb_and_backend: List[int]) -> None:
    lb_port = lb_and_backend[0]
    size = 64 * 1024 * 1024
    with socket.create_connection((HOST, lb_port), timeout=60) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(size // len(BLOCK)):
            sock.sendall(b"%x\r\n%s\r\n" % (len(BLOCK), BLOCK))
        sock.sendall(b"0\r\n\r\n")
        upload = read_response(sock)
    assert upload["body"].decode() == f"{size} {pattern(size).hexdigest()}"
