"""Embed powerlb in another Twisted application.

    python examples/embed.py --listen tcp:8080:interface=127.0.0.1 \\
        http://127.0.0.1:9001 http://127.0.0.1:9002

The application's own service (here a timer reporting powerlb's request count)
and powerlb run side by side under one parent MultiService.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.task import react

import powerlb


def parse_args(argv: Any) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="powerlb embedded in a Twisted application")
    parser.add_argument("backends", nargs="+", metavar="URL", help="backend, e.g. http://127.0.0.1:9001")
    parser.add_argument("--listen", default="tcp:8080:interface=127.0.0.1", help="endpoint to serve on")
    parser.add_argument("--exit-after", type=float, metavar="SECONDS", help="stop after this many seconds")
    return parser.parse_args(argv)


async def main(reactor: Any, *argv: str) -> None:
    args = parse_args(argv)
    app = MultiService()

    # powerlb: one instance with its own listener, backends, health checks and cache.
    try:
        lb = powerlb.makeService({"listen": args.listen, "backends": args.backends})
    except powerlb.ConfigError as err:
        raise SystemExit(f"bad powerlb configuration: {err}") from None
    lb.setServiceParent(app)

    # The application's own service: report powerlb's figures every 5 seconds.
    def report() -> None:
        print(f"requests so far: {lb.stats()['requests']}", flush=True)

    TimerService(5, report).setServiceParent(app)

    app.privilegedStartService()  # binds the listening ports
    app.startService()
    reactor.addSystemEventTrigger("before", "shutdown", app.stopService)

    port = await lb.proxy_listener.whenListening()
    print(f"powerlb listening on port {port.getHost().port}", flush=True)

    done: Deferred = Deferred()
    if args.exit_after is not None:
        reactor.callLater(args.exit_after, done.callback, None)
    await done  # until --exit-after has passed, or Ctrl-C stops the reactor


if __name__ == "__main__":
    react(main, sys.argv[1:])
