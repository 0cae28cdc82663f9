"""Built-in demo backends for ``make run`` and for tests that need real backend processes.

``python -m powerlb.demo --ports 9001,9002,9003`` serves, on each port:
``/`` (which backend answered), ``/health``, ``/cached`` (cacheable for 30 s),
``/slow?seconds=N`` and ``/bytes?n=N``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, List

from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site


class DemoBackend(Resource):
    """One demo backend; every answer names the port it came from."""

    isLeaf = True

    def __init__(self, name: str, reactor: Any) -> None:
        super().__init__()
        self.name = name
        self.reactor = reactor

    def render_GET(self, request: Request) -> Any:
        path = request.path
        request.setHeader(b"x-backend", self.name.encode())
        if path == b"/health":
            return b"ok\n"
        if path == b"/cached":
            request.setHeader(b"cache-control", b"public, max-age=30")
            stamp = time.strftime("%H:%M:%S")
            return f"backend {self.name}, generated at {stamp}; cached by powerlb for 30 s\n".encode()
        if path == b"/slow":
            seconds = float(request.args.get(b"seconds", [b"1"])[0])
            self.reactor.callLater(min(seconds, 60.0), self._finish_slow, request)
            return NOT_DONE_YET
        if path == b"/bytes":
            n = min(int(request.args.get(b"n", [b"1024"])[0]), 64 * 1024 * 1024)
            request.setHeader(b"content-type", b"application/octet-stream")
            return b"x" * n
        request.setHeader(b"content-type", b"application/json")
        body = {"backend": self.name, "method": "GET", "path": request.uri.decode("latin-1")}
        return json.dumps(body).encode() + b"\n"

    def _finish_slow(self, request: Request) -> None:
        if not request.finished and not request._disconnected:
            request.write(b"slow answer from backend " + self.name.encode() + b"\n")
            request.finish()


def listen(reactor: Any, ports: List[int], interface: str = "127.0.0.1") -> List[Any]:
    """Start one demo backend per port; returns the listening ports."""
    listening = []
    for port in ports:
        site = Site(DemoBackend(str(port), reactor), reactor=reactor)
        site.noisy = False
        listening.append(reactor.listenTCP(port, site, interface=interface))
    return listening


def main(argv: Any = None) -> None:
    """Run demo backends until interrupted."""
    parser = argparse.ArgumentParser(description="powerlb demo backends")
    parser.add_argument("--ports", default="9001,9002,9003", help="comma-separated ports")
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)
    from twisted.internet import reactor

    ports = [int(p) for p in args.ports.split(",") if p]
    listen(reactor, ports, args.interface)
    print(f"demo backends on {args.interface} ports {', '.join(map(str, ports))}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
