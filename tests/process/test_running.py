"""powerlb running for real over sockets on 127.0.0.1: as a twistd plugin, from lb.tac,
embedded (in-process and examples/embed.py), and with bad configuration. (Installed into
a fresh virtualenv: tests/process/test_packaging.py.)"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, List, Optional

import pytest
import pytest_twisted
import treq
from twisted.internet import defer, error
from twisted.web.resource import Resource
from twisted.web.server import Site

import powerlb
from tests.support import (
    HOST,
    REPO,
    Process,
    check_weighted_balancer,
    clean_env,
    get,
    start_twistd,
    start_twistd_powerlb,
    stats,
    twistd,
    wait_until,
)
from tests.support.inproc import fetch

#: The reactor twistd runs powerlb on when not told otherwise (powerlb.eventloop).
DIRECT_EPOLL = "powerlb.eventloop.DirectEPollReactor"


@pytest.fixture
def demo(demo_backends: Any) -> List[int]:
    """Two demo backends' ports."""
    return demo_backends(2)


def assert_clean_shutdown(proc: Process, status: Optional[int]) -> None:
    """twistd shut down in an orderly way on SIGTERM (it re-raises the signal to exit)."""
    assert status in (0, -signal.SIGTERM), proc.describe()
    assert "Server Shut Down." in proc.output(), proc.describe()
    assert "Traceback" not in proc.output(), proc.describe()


# --- twistd powerlb -------------------------------------------------------------------


def test_twistd_plugin(tmp_path: Path, demo: List[int]) -> None:
    b1, b2 = demo

    proc, (listen, admin) = start_twistd_powerlb(
        tmp_path, [b1],
        "--backend", f"http://{HOST}:{b2},weight=3",
        "--algorithm", "weighted-round-robin",
        "--health-path", "/health",
        "--health-interval", "2",
        "--cache-size", "64MiB",
    )  # fmt: skip
    try:
        check_weighted_balancer(listen, admin, {b1: 1, b2: 3})
        # --health-path /health is probed on both backends.
        wait_until(lambda: all(b["last_check"] == "200" for b in stats(admin)["backends"]), "health checks")
    finally:
        status = proc.stop()
    assert_clean_shutdown(proc, status)
    assert f"reactor class: {DIRECT_EPOLL}." in proc.output(), proc.describe()


def test_twistd_keeps_the_reactor_it_was_told_to_use(tmp_path: Path, demo: List[int]) -> None:
    def args(ports: List[int]) -> List[str]:
        listen, admin = ports
        return [
            "--reactor", "poll", "powerlb",
            "--listen", f"tcp:{listen}:interface={HOST}", "--admin", f"tcp:{admin}:interface={HOST}",
            "--backend", f"http://{HOST}:{demo[0]}",
        ]  # fmt: skip

    proc, (listen, _) = start_twistd(tmp_path, args)
    try:
        assert get(listen, "/").status == 200
    finally:
        status = proc.stop()
    assert_clean_shutdown(proc, status)
    assert "reactor class: twisted.internet.pollreactor.PollReactor." in proc.output(), proc.describe()


# --- twistd -ny lb.tac ----------------------------------------------------------------


def test_tac_file(tmp_path: Path, demo: List[int]) -> None:
    b1, b2 = demo
    config = tmp_path / "powerlb.yaml"

    def args(ports: List[int]) -> List[str]:
        listen, admin = ports
        config.write_text(
            f"listen: tcp:{listen}:interface={HOST}\n"
            f"admin: tcp:{admin}:interface={HOST}\n"
            "algorithm: weighted-round-robin\n"
            "backends:\n"
            f"  - http://{HOST}:{b1},weight=2\n"
            f"  - url: http://{HOST}:{b2}\n"
            "    weight: 1\n"
            "health-path: /health\n"
            "health-interval: 2\n"
            "cache-size: 64MiB\n",
            encoding="utf-8",
        )
        return ["-y", str(REPO / "lb.tac")]

    proc, (listen, admin) = start_twistd(tmp_path, args, env=clean_env(POWERLB_CONFIG=str(config)))
    try:
        check_weighted_balancer(listen, admin, {b1: 2, b2: 1})
    finally:
        status = proc.stop()
    assert_clean_shutdown(proc, status)
    assert f"reactor class: {DIRECT_EPOLL}." in proc.output(), proc.describe()


# --- bad configuration ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "setting"),
    [
        (["--backend", "http://127.0.0.1:9", "--algorithm", "fastest"], "algorithm"),
        (["--backend", "http:/127.0.0.1:9"], "backend"),
        (["--backend", "http://127.0.0.1:9", "--cache-size", "-1MiB"], "cache-size"),
        (["--config", "{missing}"], "config"),
        (["--config", "{unreadable}"], "config"),
        (["--listen", "tcp:0:interface=127.0.0.1"], "backend"),
    ],
    ids=["unknown-algorithm", "malformed-backend", "negative-cache-size", "missing-config",
         "unreadable-config", "no-backend"],
)  # fmt: skip
def test_bad_configuration(tmp_path: Path, args: List[str], setting: str) -> None:
    unreadable = tmp_path / "unreadable.yaml"
    unreadable.mkdir()  # a directory: unreadable as a file even when running as root
    paths = {"missing": str(tmp_path / "missing.yaml"), "unreadable": str(unreadable)}
    args = [arg.format(**paths) for arg in args]
    command = twistd("powerlb", *args)
    try:
        done = subprocess.run(
            command, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=15
        )
    except subprocess.TimeoutExpired:  # run() has killed it by then
        pytest.fail(f"{command} still running after 15 s; it should refuse to start")
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    # twistd prints the option summary, then one line: "<twistd>: <setting>: <problem>".
    naming = [line for line in output.splitlines() if f": {setting}: " in line]
    assert len(naming) == 1, output
    assert naming[0] == output.rstrip("\n").splitlines()[-1], output


# --- embedded: in-process, two instances on the test reactor --------------------------


class Named(Resource):
    """A tiny backend that answers every path with its name (and counts the answers,
    health probes aside); /cached is cacheable."""

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.hits = 0

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"x-backend", self.name.encode())
        if request.path == b"/health":
            return b"ok"
        self.hits += 1
        if request.path == b"/cached":
            request.setHeader(b"cache-control", b"public, max-age=30")
        return json.dumps({"backend": self.name, "hit": self.hits}).encode()


@pytest_twisted.ensureDeferred
async def test_two_embedded_instances_do_not_interfere(http: Any) -> None:
    from twisted.internet import reactor

    started: List[Any] = []
    try:
        backend = {name: Named(name) for name in ("a", "b")}
        backend_port = {}
        for name, resource in backend.items():
            site = Site(resource)
            site.noisy = False
            port = reactor.listenTCP(0, site, interface=HOST)
            started.append(port)
            backend_port[name] = port.getHost().port
        lb = {
            name: powerlb.makeService(
                {
                    "listen": f"tcp:0:interface={HOST}",
                    "admin": f"tcp:0:interface={HOST}",
                    "backends": [f"http://{HOST}:{backend_port[name]}"],
                    "health-interval": "0.2",
                }
            )
            for name in ("a", "b")
        }
        for svc in lb.values():
            svc.privilegedStartService()
            svc.startService()
            started.append(svc)
        proxy = {name: (await svc.proxy_listener.whenListening()).getHost().port for name, svc in lb.items()}
        url = {name: f"http://{HOST}:{port}" for name, port in proxy.items()}
        admin = {name: (await svc.admin_listener.whenListening()).getHost().port for name, svc in lb.items()}
        assert len({*proxy.values(), *admin.values()}) == 4

        for _ in range(3):
            assert (await fetch(http, url["a"] + "/")).backend == "a"
        assert (await fetch(http, url["b"] + "/")).backend == "b"

        # Caches are separate: a HIT on a, then b still asks its own backend.
        assert (await fetch(http, url["a"] + "/cached")).x_cache == b"MISS"
        assert (await fetch(http, url["a"] + "/cached")).x_cache == b"HIT"
        on_b = await fetch(http, url["b"] + "/cached")
        assert (on_b.backend, on_b.x_cache) == ("b", b"MISS")

        assert lb["a"].stats()["requests"] == 5
        assert lb["b"].stats()["requests"] == 2
        assert lb["a"].stats()["cache"]["hits"] == 1
        assert lb["b"].stats()["cache"]["hits"] == 0
        assert [b["requests"] for b in lb["a"].stats()["backends"]] == [4]
        assert [b["requests"] for b in lb["b"].stats()["backends"]] == [2]
        resp = await treq.get(f"http://{HOST}:{admin['b']}/api/v1/stats", persistent=False, timeout=5)
        figures = await resp.json()
        assert figures["requests"] == 2
        assert [b["url"] for b in figures["backends"]] == [f"http://{HOST}:{backend_port['b']}"]

        # Stopping a leaves b serving.
        started.remove(lb["a"])
        await lb["a"].stopService()
        with pytest.raises(error.ConnectionRefusedError):
            await treq.get(f"http://{HOST}:{proxy['a']}/", persistent=False, timeout=5)
        for _ in range(3):
            assert (await fetch(http, url["b"] + "/")).backend == "b"
        assert lb["b"].stats()["requests"] == 5
        assert backend["a"].hits == 4  # nothing of b's reached a
        assert backend["b"].hits == 5
    finally:
        for thing in reversed(started):
            await defer.maybeDeferred(
                thing.stopService if hasattr(thing, "stopService") else thing.stopListening
            )


@pytest_twisted.ensureDeferred
async def test_start_service_alone_listens(make_backends: Any, http: Any) -> None:
    """Embedders often call only startService(); the listener must bind then too, and proxy."""
    from twisted.internet import reactor

    (a,) = make_backends(1)
    svc = powerlb.makeService({"listen": f"tcp:0:interface={HOST}", "backends": [a.url]})
    svc.startService()
    try:
        d = svc.proxy_listener.whenListening()
        d.addTimeout(3, reactor)
        port = await d
        reply = await fetch(http, f"http://{HOST}:{port.getHost().port}/alone")
        assert (reply.code, reply.backend) == (200, "a")
        assert b"/alone" in [r.uri for r in a.requests]
    finally:
        await svc.stopService()


# --- embedded: examples/embed.py ------------------------------------------------------


def test_embed_example(tmp_path: Path, demo: List[int]) -> None:
    exit_after = 5
    args = [
        sys.executable, str(REPO / "examples" / "embed.py"),
        "--listen", f"tcp:0:interface={HOST}",
        "--exit-after", str(exit_after),
        *(f"http://{HOST}:{port}" for port in demo),
    ]  # fmt: skip
    proc = Process(args, tmp_path / "embed.log", cwd=tmp_path, env=clean_env())
    try:

        def listening() -> int:
            assert not proc.exited(), proc.describe()
            found = re.search(r"powerlb listening on port (\d+)", proc.output())
            return int(found.group(1)) if found else 0

        port = wait_until(listening, "examples/embed.py")
        answers = [get(port, f"/embed/{n}") for n in range(4)]
        assert [r.status for r in answers] == [200] * 4
        assert sorted(r.json()["backend"] for r in answers) == sorted(map(str, demo * 2))
        # It stops by itself after --exit-after seconds, cleanly.
        assert proc.wait(exit_after + 15) == 0, proc.describe()
    finally:
        proc.stop()
    assert "Traceback" not in proc.output(), proc.describe()
    assert "requests so far: 0" in proc.output()
