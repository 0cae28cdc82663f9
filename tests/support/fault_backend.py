"""A backend for fault-injection tests: answers with its name, logs every request, fails on demand.

``python tests/support/fault_backend.py NAME PORT LOG`` serves HTTP/1.1 (keep-alive) on
127.0.0.1:PORT, one thread per connection. Every request is answered ``200``
with ``X-Backend: NAME`` and a body of :data:`BODY_SIZE` bytes naming the
backend and the request's ``X-Request-Id``; ``POST`` bodies (``Content-Length``)
are read first.

Every request carrying an ``X-Request-Id`` is appended to LOG as a JSON line
``{"backend", "id", "method", "mode", "event"}``: event ``recv`` when its
head and body have been read, ``sent`` once the whole response has been
written. A request that is never answered (hung, reset, or the process was
killed) has a ``recv`` line and no ``sent`` line. Several processes may share
one LOG (lines are written whole, in append mode).

The mode applies to every request received from then on, ``/health`` included:

- SIGHUP: ``normal``.
- SIGUSR1: ``hang``: read the request, never answer (the connection stays open
  until the peer closes it).
- SIGUSR2: ``reset``: send the head and half of the body, pause, then reset
  the connection (SO_LINGER 0).

Each switch prints ``mode MODE`` on stdout, so a test can wait until it took effect.
Blocking sockets and threads are fine here: this is a test peer, not powerlb.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from typing import Any, Dict, Tuple

BODY_SIZE = 2048
#: Time between sending part of a response and resetting the connection, in reset mode.
RESET_PAUSE = 0.05
#: Time each request "works" before it is answered, so faults find requests in flight.
WORK = 0.005


class Backend:
    def __init__(self, name: str, log_path: str) -> None:
        self.name = name
        self.mode = "normal"
        self.log_fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lock = threading.Lock()

    def set_mode(self, mode: str) -> None:
        self.mode = mode
        print(f"mode {mode}", flush=True)

    def log(self, request_id: str, method: str, mode: str, event: str) -> None:
        line = json.dumps(
            {"backend": self.name, "id": request_id, "method": method, "mode": mode, "event": event}
        )
        with self.lock:  # one write per line, O_APPEND: whole lines even across processes
            os.write(self.log_fd, line.encode() + b"\n")

    def serve(self, conn: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                method, target, headers = parse_head(head)
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                buffer = buffer[length:]
                request_id = headers.get("x-request-id", "")
                mode = self.mode
                if request_id:
                    self.log(request_id, method, mode, "recv")
                if not self.answer(conn, mode, target, request_id, headers):
                    return
                if request_id:
                    self.log(request_id, method, mode, "sent")
        except OSError:
            pass
        finally:
            conn.close()

    def answer(
        self, conn: socket.socket, mode: str, target: str, request_id: str, headers: Dict[str, str]
    ) -> bool:
        """Answer one request in ``mode``; False when the connection is finished with."""
        if mode == "hang":
            while conn.recv(65536):  # until the peer gives up
                pass
            return False
        text = f"{self.name} {request_id or target}\n".encode()
        body = text + b"." * (BODY_SIZE - len(text) - 1) + b"\n"
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nCache-Control: no-store\r\n"
            b"X-Backend: %s\r\nContent-Length: %d\r\n\r\n" % (self.name.encode(), len(body))
        )
        if mode == "reset":
            conn.sendall(head + body[: len(body) // 2])
            time.sleep(RESET_PAUSE)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # closed (reset) by serve()
        if target != "/health":
            time.sleep(WORK)
        conn.sendall(head + body)
        return headers.get("connection", "").lower() != "close"


def parse_head(head: bytes) -> Tuple[str, str, Dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def main() -> None:
    name, port, log_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    backend = Backend(name, log_path)

    def switch(mode: str) -> Any:
        return lambda signum, frame: backend.set_mode(mode)

    signal.signal(signal.SIGHUP, switch("normal"))
    signal.signal(signal.SIGUSR1, switch("hang"))
    signal.signal(signal.SIGUSR2, switch("reset"))
    server = socket.create_server(("127.0.0.1", port), reuse_port=False, backlog=128)
    print(f"{name} listening on {port}", flush=True)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=backend.serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
