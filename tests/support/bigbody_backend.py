"""A minimal HTTP/1.1 backend for big-body tests: hashes uploads, streams generated downloads.

``python tests/support/bigbody_backend.py PORT`` on 127.0.0.1, one thread per connection:
``POST /upload`` (Content-Length or chunked) answers ``<bytes> <sha256>``;
``GET /download?n=N`` sends N bytes of :func:`pattern`; ``GET /health`` answers ok.
Blocking sockets and threads are fine here: this is a test peer, not powerlb.
"""

from __future__ import annotations

import hashlib
import socket
import sys
import threading

BLOCK = bytes(range(256)) * 256  # 64 KiB


def pattern(n: int) -> hashlib._Hash:
    """The sha256 of the first ``n`` bytes of the download pattern."""
    digest = hashlib.sha256()
    while n > 0:
        piece = BLOCK[: min(n, len(BLOCK))]
        digest.update(piece)
        n -= len(piece)
    return digest


class Reader:
    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn
        self.buffer = b""

    def until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            data = self.conn.recv(65536)
            if not data:
                raise EOFError
            self.buffer += data
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def exactly(self, n: int, digest: hashlib._Hash) -> None:
        while n > 0:
            if not self.buffer:
                self.buffer = self.conn.recv(min(1 << 20, n))
                if not self.buffer:
                    raise EOFError
            piece, self.buffer = self.buffer[:n], self.buffer[n:]
            digest.update(piece)
            n -= len(piece)


def respond(conn: socket.socket, body: bytes) -> None:
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def serve(conn: socket.socket) -> None:
    reader = Reader(conn)
    try:
        while True:
            head = reader.until(b"\r\n\r\n").decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            if method == "POST":
                digest, total = hashlib.sha256(), 0
                if headers.get("transfer-encoding") == "chunked":
                    while True:
                        size = int(reader.until(b"\r\n").split(b";")[0], 16)
                        if size == 0:
                            reader.until(b"\r\n")
                            break
                        reader.exactly(size, digest)
                        reader.until(b"\r\n")
                        total += size
                else:
                    total = int(headers.get("content-length", "0"))
                    reader.exactly(total, digest)
                respond(conn, b"%d %s" % (total, digest.hexdigest().encode()))
            elif target.startswith("/download"):
                n = int(target.split("n=")[1])
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % n)
                while n > 0:
                    piece = BLOCK[: min(n, len(BLOCK))]
                    conn.sendall(piece)
                    n -= len(piece)
            else:
                respond(conn, b"ok\n")
    except (EOFError, OSError):
        pass
    finally:
        conn.close()


def main() -> None:
    server = socket.create_server(("127.0.0.1", int(sys.argv[1])))
    while True:
        conn, _ = server.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
