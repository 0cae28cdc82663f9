"""Lifecycle: graceful shutdown (drain) and configuration reload (SIGHUP), in-process and for real."""

from __future__ import annotations

import http.client
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import pytest
import pytest_twisted
import treq
from twisted.internet import error

import powerlb
from powerlb.backend import BackendSpec
from powerlb.reload import ConfigSource, diff_backends
from powerlb.signals import ReloadOnSighup
from powerlb.values import parse_backend
from tests.support import (
    HOST,
    REPO,
    Process,
    accepts,
    clean_env,
    get,
    start_twistd,
    start_twistd_powerlb,
    stats,
    wait_until,
)
from tests.support.inproc import reloaded, slow_route, wait_for

# --- diff_backends (pure) ----------------------------------------------------------------


def specs(*texts: str) -> List[BackendSpec]:
    return [parse_backend(text) for text in texts]


def test_diff_backends_added_removed_reweighted_by_url() -> None:
    old = specs("http://a:1", "http://b:1,weight=2", "http://c:1", "http://d:1")
    new = specs("http://e:1", "http://b:1,weight=5", "http://a:1", "http://d:1,backup")
    added, removed, reweighted = diff_backends(old, new)
    assert [s.url for s in added] == ["http://e:1"]
    assert [s.url for s in removed] == ["http://c:1"]
    assert [(s.url, s.weight, s.backup) for s in reweighted] == [
        ("http://b:1", 5, False),
        ("http://d:1", 1, True),
    ]


def test_diff_backends_same_or_reordered_is_no_change() -> None:
    old = specs("http://a:1", "http://b:1,weight=2")
    assert diff_backends(old, list(reversed(old))) == ([], [], [])
    assert diff_backends([], old) == (old, [], [])
    assert diff_backends(old, []) == ([], old, [])


# --- reload() in-process -----------------------------------------------------------------


async def names(http: Any, url: str, count: int) -> List[str]:
    out = []
    for number in range(count):
        resp = await http.get(f"{url}/n/{number}", timeout=5)
        assert resp.code == 200
        out.append((await resp.json())["backend"])
    return out


@pytest_twisted.ensureDeferred
async def test_reload_adds_removes_and_reweights_backends(make_backends, start_powerlb, http) -> None:
    a, b, c = make_backends(3)
    a.routes[b"/slow"] = slow_route(0.5)
    lb = start_powerlb([a, b], algorithm="weighted-round-robin")
    service = lb.service
    assert await names(http, lb.url, 4) == ["a", "b", "a", "b"]
    backend_a, backend_b = service.backends
    pool_a = service.clients[backend_a]

    # A request in flight to a, which the reload removes.
    in_flight = treq.get(f"{lb.url}/slow", persistent=False, timeout=5)
    await wait_for(lambda: backend_a.in_flight == 1)

    service.reload(reloaded(lb, algorithm="weighted-round-robin", backends=[f"{b.url},weight=3", c.url]))
    assert [x.url for x in service.backends] == [b.url, c.url]
    assert service.backends[0] is backend_b  # re-weighted in place: same counters
    assert (backend_b.weight, backend_b.requests) == (3, 2)
    assert backend_a not in service.clients

    seen = await names(http, lb.url, 8)
    assert sorted(seen) == ["b"] * 6 + ["c"] * 2
    resp = await in_flight
    assert (resp.code, await resp.content()) == (200, b"slow")
    assert a.served() == 3  # two before the reload, and the slow one
    await wait_for(lambda: pool_a.open_connections == 0)  # its pool closed once the request ended
    assert [x["url"] for x in service.stats()["backends"]] == [b.url, c.url]


@pytest_twisted.ensureDeferred
async def test_reload_changes_the_algorithm_and_ignores_restart_settings(
    make_backends, start_powerlb, http, logged
) -> None:
    a, b = make_backends(2)
    lb = start_powerlb([a, b], retries=1)
    service = lb.service
    old_balancer = service.balancer
    service.reload(
        reloaded(
            lb, algorithm="least-connections", retries=0, drain_timeout=3, listen="tcp:1", cache_size="1MiB"
        )
    )
    assert service.balancer is not old_balancer
    assert service.dispatcher.balancer is service.balancer
    assert service.dispatcher.retries == 0
    assert (service.config.algorithm, service.config.drain_timeout) == ("least-connections", 3.0)
    assert service.config.listen == "tcp:0:interface=127.0.0.1"  # kept: needs a restart
    assert service.config.cache_size == 64 * 1024 * 1024
    restart = [line for line in logged if "needs a restart" in line]
    assert len(restart) == 2, logged
    assert "reload: listen changed" in restart[0]
    assert "reload: cache-size changed" in restart[1]
    assert sorted(await names(http, lb.url, 4)) == ["a", "a", "b", "b"]


@pytest_twisted.ensureDeferred
async def test_reload_applies_hash_settings_but_not_a_sticky_cookie(
    make_backends, start_powerlb, http, logged
) -> None:
    a, b, c = make_backends(3)
    lb = start_powerlb([a, b, c], algorithm="consistent-hash", cache_size=0)
    service = lb.service
    by_client = service.balancer
    paths = [f"{lb.url}/p{number}" for number in range(12)]
    assert len({name for path in paths for name in await names_of(http, path, 1)}) == 1  # the client is key
    service.reload(reloaded(lb, algorithm="consistent-hash", hash_key="uri", sticky_cookie="lb"))
    assert service.balancer is not by_client and service.dispatcher.balancer is service.balancer
    assert service.config.hash_key == "uri"
    assert service.config.sticky_cookie is None  # kept: needs a restart
    assert any("reload: sticky-cookie changed" in line for line in logged), logged
    # the URI is the key now: the same client's paths spread, each path staying on one backend
    assert len({name for path in paths for name in await names_of(http, path, 1)}) > 1
    assert len(set(await names_of(http, paths[0], 4))) == 1
    by_uri = service.balancer
    service.reload(reloaded(lb, algorithm="consistent-hash", hash_key="uri", hash_balance_factor=1.5))
    assert service.balancer is not by_uri
    assert service.config.hash_balance_factor == 1.5
    assert any("hash-balance-factor 1.5" in line for line in logged), logged


async def names_of(http: Any, url: str, count: int) -> List[str]:
    """The backend answering each of ``count`` GETs of ``url``."""
    out = []
    for _ in range(count):
        resp = await http.get(url, timeout=5)
        out.append((await resp.json())["backend"])
    return out


@pytest_twisted.ensureDeferred
async def test_reload_from_a_bad_file_keeps_the_running_config(
    tmp_path: Path, make_backends, start_powerlb, http, logged
) -> None:
    a, b = make_backends(2)
    lb = start_powerlb([a])
    config = tmp_path / "lb.yaml"
    config.write_text(f"backends: [{b.url}]\nalgorithm: fastest\n", encoding="utf-8")
    watcher = ReloadOnSighup(lb.service, ConfigSource(str(config), {"listen": "tcp:0:interface=127.0.0.1"}))
    watcher.reload()
    errors = [line for line in logged if "reload failed" in line]
    assert len(errors) == 1, logged
    assert "keeping the running configuration: algorithm: unknown algorithm 'fastest'" in errors[0]
    assert await names(http, lb.url, 2) == ["a", "a"]

    config.write_text(f"backends: [{b.url}]\n", encoding="utf-8")
    watcher.reload()
    assert await names(http, lb.url, 2) == ["b", "b"]


def test_config_source_command_line_wins_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "lb.yaml"
    config.write_text("backends: [http://a:1]\nalgorithm: source-hash\nretries: 3\n", encoding="utf-8")
    source = ConfigSource(str(config), {"retries": "0", "backend": []}, {"workers": 1})
    loaded = source.load()
    assert (loaded.algorithm, loaded.retries, loaded.workers) == ("source-hash", 0, 1)
    assert [s.url for s in loaded.backends] == ["http://a:1"]


# --- graceful stop in-process ------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stop_lets_in_flight_requests_finish_and_closes_idle_connections(make_backends, http) -> None:
    (a,) = make_backends(1)
    a.routes[b"/slow"] = slow_route(1.0)
    service = powerlb.makeService(
        {"listen": f"tcp:0:interface={HOST}", "backends": [a.url], "drain-timeout": 5, "health-interval": 60}
    )
    service.startService()
    port = service.proxy_listener.port.getHost().port
    site = service.proxy_listener.factory
    stopped = None
    try:
        assert (await http.get(f"http://{HOST}:{port}/idle", timeout=5)).code == 200  # stays idle in the pool
        slow = treq.get(f"http://{HOST}:{port}/slow", persistent=False, timeout=5)
        await wait_for(lambda: service.backends[0].in_flight == 1)
        assert len(site.channels) == 2
        started = time.monotonic()
        stopped = service.stopService()
        await wait_for(lambda: len(site.channels) == 1, timeout=0.5)  # the idle one is closed at once
        with pytest.raises(error.ConnectionRefusedError):
            await treq.get(f"http://{HOST}:{port}/new", persistent=False, timeout=5)
        assert not stopped.called
        resp = await slow
        assert resp.code == 200
        assert await resp.content() == b"slow"
        await stopped
        assert time.monotonic() - started < 2.0
    finally:
        if stopped is None:
            await service.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_cuts_requests_still_running_after_the_drain_timeout(make_backends) -> None:
    (a,) = make_backends(1)
    a.routes[b"/slow"] = slow_route(30.0)
    service = powerlb.makeService(
        {"listen": f"tcp:0:interface={HOST}", "backends": [a.url], "drain-timeout": "0.5s"}
    )
    service.startService()
    port = service.proxy_listener.port.getHost().port
    slow = treq.get(f"http://{HOST}:{port}/slow", persistent=False, timeout=10)
    await wait_for(lambda: service.backends[0].in_flight == 1)
    started = time.monotonic()
    await service.stopService()
    assert 0.4 < time.monotonic() - started < 1.5
    with pytest.raises(Exception):  # noqa: B017 - the connection is cut: ResponseNeverReceived
        await slow
    assert service.backends[0].in_flight == 0
    await wait_for(lambda: service.clients[service.backends[0]].open_connections == 0)


# --- for real: twistd, signals -----------------------------------------------------------


@pytest.fixture
def demo(demo_backends: Any) -> List[int]:
    """Three demo backends' ports."""
    return demo_backends(3)


def in_thread(target: Any) -> Dict[str, Any]:
    """Run ``target()`` in a daemon thread; the dict gets "result" or "error", and "thread"."""
    box: Dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = target()
        except Exception as exc:
            box["error"] = exc

    box["thread"] = threading.Thread(target=run, daemon=True)
    box["thread"].start()
    return box


def slow_get(port: int, seconds: float) -> Any:
    """GET /slow?seconds=N on the demo backends through ``port``: (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=15)
    try:
        conn.request("GET", f"/slow?seconds={seconds}")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def refused(port: int) -> bool:
    try:
        accepts(port)
    except ConnectionRefusedError:
        return True
    return False


def assert_clean_exit(proc: Process, status: Any) -> None:
    assert status in (0, -signal.SIGTERM), proc.describe()
    assert "Traceback" not in proc.output(), proc.describe()


def test_sigterm_waits_for_the_request_in_flight(tmp_path: Path, demo: List[int]) -> None:
    proc, (listen, admin) = start_twistd_powerlb(tmp_path, demo[:1], "--drain-timeout", "10s")
    try:
        box = in_thread(lambda: slow_get(listen, 1.5))
        wait_until(lambda: stats(admin)["backends"][0]["in_flight"] == 1, "the slow request upstream")
        os.kill(proc.pid, signal.SIGTERM)
        wait_until(lambda: refused(listen), "the listener closed", timeout=2)
        assert not proc.exited()
        box["thread"].join(10)
        assert box.get("result") == (200, f"slow answer from backend {demo[0]}\n".encode()), box
        proc.wait(5)  # exits once the request is over
    finally:
        status = proc.stop()
    assert_clean_exit(proc, status)


def test_sigterm_cuts_a_request_slower_than_the_drain_timeout(tmp_path: Path, demo: List[int]) -> None:
    proc, (listen, admin) = start_twistd_powerlb(tmp_path, demo[:1], "--drain-timeout", "1s")
    try:
        box = in_thread(lambda: slow_get(listen, 30))
        wait_until(lambda: stats(admin)["backends"][0]["in_flight"] == 1, "the slow request upstream")
        started = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(6)
        took = time.monotonic() - started
        box["thread"].join(5)
        assert "error" in box, box  # cut: the response never came
        assert 0.9 < took < 5, took
    finally:
        status = proc.stop()
    assert_clean_exit(proc, status)


def counts(port: int, requests: int) -> Dict[int, int]:
    seen: Dict[int, int] = {}
    for number in range(requests):
        resp = get(port, f"/count/{number}")
        assert resp.status == 200
        backend = int(resp.headers["x-backend"])
        seen[backend] = seen.get(backend, 0) + 1
    return seen


def write_backends(path: Path, algorithm: str, *entries: str) -> None:
    lines = "".join(f"  - http://{HOST}:{entry}\n" for entry in entries)
    path.write_text(f"algorithm: {algorithm}\nhealth-interval: 60s\nbackends:\n{lines}", encoding="utf-8")


def test_sighup_reloads_backends_from_the_config_file(tmp_path: Path, demo: List[int]) -> None:
    b1, b2, b3 = demo
    config = tmp_path / "lb.yaml"
    write_backends(config, "weighted-round-robin", f"{b1}", f"{b2}")
    proc, (listen, admin) = start_twistd_powerlb(tmp_path, [], "--config", str(config))
    try:
        # The first pick is b1: keep a request in flight there across the reload.
        box = in_thread(lambda: slow_get(listen, 1.5))
        wait_until(lambda: stats(admin)["backends"][0]["in_flight"] == 1, "the slow request on b1")
        write_backends(config, "weighted-round-robin", f"{b2},weight=3", f"{b3}")
        os.kill(proc.pid, signal.SIGHUP)
        urls = [f"http://{HOST}:{b2}", f"http://{HOST}:{b3}"]
        wait_until(lambda: [b["url"] for b in stats(admin)["backends"]] == urls, "the reload", timeout=5)
        assert [b["weight"] for b in stats(admin)["backends"]] == [3, 1]

        seen = counts(listen, 40)
        assert set(seen) == {b2, b3}, seen  # b1 gets nothing more, b3 gets traffic
        assert 28 <= seen[b2] <= 32, seen  # 3:1
        box["thread"].join(10)
        assert box.get("result") == (200, f"slow answer from backend {b1}\n".encode()), box
        assert "config reloaded: 1 backends added, 1 removed, 1 re-weighted" in proc.output()
    finally:
        status = proc.stop()
    assert_clean_exit(proc, status)


def test_sighup_reloads_routes_and_pools(tmp_path: Path, demo: List[int]) -> None:
    b1, b2, b3 = demo
    config = tmp_path / "lb.yaml"

    def write(pools: Dict[str, List[int]], routes: str) -> None:
        lines = ["health-interval: 60s", "pools:"]
        for name, ports in pools.items():
            lines += [f"  {name}:", "    backends:", *(f"      - http://{HOST}:{port}" for port in ports)]
        config.write_text("\n".join([*lines, "routes:", routes, ""]), encoding="utf-8")

    write({"default": [b1], "api": [b2]}, "  - {path-prefix: /api/, pool: api}\n  - {pool: default}")
    proc, (listen, admin) = start_twistd_powerlb(tmp_path, [], "--config", str(config))
    try:
        assert [p["name"] for p in stats(admin)["pools"]] == ["default", "api"]
        write({"default": [b1], "img": [b3]}, "  - {path-prefix: /img/, pool: img}\n  - {pool: default}")
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: [p["name"] for p in stats(admin)["pools"]] == ["default", "img"], "the reload")
        figures = stats(admin)
        assert [(b["pool"], b["url"]) for b in figures["backends"]] == [
            ("default", f"http://{HOST}:{b1}"),
            ("img", f"http://{HOST}:{b3}"),
        ]
        assert [(r["route"], r["pool"], r["match"]) for r in figures["routes"]] == [
            ("0", "img", "path-prefix /img/"),
            ("1", "default", "*"),
        ]
        assert get(listen, "/").status == 200
        assert "reload: pool api removed" in proc.output()
    finally:
        status = proc.stop()
    assert_clean_exit(proc, status)


def test_sighup_with_a_broken_file_keeps_serving(tmp_path: Path, demo: List[int]) -> None:
    b1, b2, _ = demo
    config = tmp_path / "lb.yaml"
    write_backends(config, "round-robin", f"{b1}", f"{b2}")
    proc, (listen, _) = start_twistd_powerlb(tmp_path, [], "--config", str(config))
    try:
        config.write_text(f"backends: [http://{HOST}:{b1}]\nalgorithm: fastest\n", encoding="utf-8")
        os.kill(proc.pid, signal.SIGHUP)
        wait_until(lambda: "reload failed" in proc.output(), "the reload", timeout=5)
        errors = [line for line in proc.output().splitlines() if "reload failed" in line]
        assert len(errors) == 1, proc.output()
        assert "algorithm: unknown algorithm 'fastest'" in errors[0]
        assert counts(listen, 4) == {b1: 2, b2: 2}
        assert not proc.exited()
    finally:
        status = proc.stop()
    assert_clean_exit(proc, status)


def test_sighup_and_sigterm_with_workers_and_lb_tac(tmp_path: Path, demo: List[int]) -> None:
    b1, b2, b3 = demo
    config = tmp_path / "lb.yaml"

    def args(ports: List[int]) -> List[str]:
        listen, admin = ports
        write_backends(config, "round-robin", f"{b1}")
        with open(config, "a", encoding="utf-8") as out:
            out.write(
                f"listen: tcp:{listen}:interface={HOST}\nadmin: tcp:{admin}:interface={HOST}\nworkers: 2\n"
            )
        return ["-y", str(REPO / "lb.tac")]

    def ready(ports: List[int]) -> bool:
        return accepts(ports[0]) and len(stats(ports[1]).get("workers", [])) == 2

    env = clean_env(POWERLB_CONFIG=str(config))
    proc, (listen, admin) = start_twistd(tmp_path, args, ready=ready, env=env)
    try:
        text = config.read_text(encoding="utf-8").replace(f"{b1}\n", f"{b2}\n  - http://{HOST}:{b3}\n")
        config.write_text(text, encoding="utf-8")
        os.kill(proc.pid, signal.SIGHUP)
        urls = [f"http://{HOST}:{b2}", f"http://{HOST}:{b3}"]
        wait_until(
            lambda: [b["url"] for b in stats(admin).get("backends", [])] == urls, "the reload", timeout=30
        )
        assert proc.output().count("config reloaded: 2 backends added, 1 removed") == 2, proc.output()
        assert set(counts(listen, 8)) == {b2, b3}

        box = in_thread(lambda: slow_get(listen, 1.0))
        wait_until(lambda: sum(b["in_flight"] for b in stats(admin)["backends"]) == 1, "the slow request")
        os.kill(proc.pid, signal.SIGTERM)
        box["thread"].join(10)
        assert box.get("result", (0,))[0] == 200, box
        proc.wait(10)
    finally:
        status = proc.stop()
    assert_clean_exit(proc, status)
