"""``--workers``: several processes on one socket, merged stats, a dead worker restarted."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, List

import pytest

from powerlb.workers import merge_snapshots
from tests.support import (
    HOST,
    Process,
    accepts,
    clean_env,
    get,
    request,
    script,
    start_server,
    stats,
    wait_until,
)


def snapshot(requests: int, healthy: bool, hits: int, misses: int) -> dict:
    return {
        "requests": requests,
        "backends": [
            {"url": "http://b", "weight": 3, "healthy": healthy, "in_flight": 1, "requests": requests}
        ],
        "cache": {"enabled": True, "hits": hits, "misses": misses, "hit_ratio": 0.0, "max_bytes": 64},
    }


def test_merge_sums_counters_keeps_identity_and_needs_every_worker_healthy() -> None:
    merged = merge_snapshots([snapshot(3, True, 1, 1), snapshot(5, False, 2, 0)])
    assert merged["requests"] == 8
    backend = merged["backends"][0]
    assert (backend["url"], backend["weight"], backend["healthy"], backend["in_flight"]) == (
        "http://b",
        3,
        False,
        2,
    )
    assert merged["cache"]["max_bytes"] == 64
    assert merged["cache"]["hit_ratio"] == 0.75
    assert merge_snapshots([]) == {}


@pytest.fixture
def demo(demo_backends: Any) -> List[int]:
    """Two demo backends' ports."""
    return demo_backends(2)


def test_two_workers_share_the_socket_and_report_merged_stats(tmp_path: Path, demo: List[int]) -> None:
    def make(ports: List[int]) -> Process:
        listen, admin = ports
        args = [
            script("twistd"),
            "-n",
            "--pidfile=",
            "powerlb",
            "--workers",
            "2",
            "--listen",
            f"tcp:{listen}:interface={HOST}",
            "--admin",
            f"tcp:{admin}:interface={HOST}",
        ]
        args += [arg for port in demo for arg in ("--backend", f"http://{HOST}:{port}")]
        return Process(args, tmp_path / "twistd.log", cwd=tmp_path, env=clean_env())

    def ready(ports: List[int]) -> bool:
        return accepts(ports[0]) and len(stats(ports[1]).get("workers", [])) == 2

    proc, (listen, admin) = start_server(make, 2, ready)
    try:
        for _ in range(30):
            assert get(listen, "/").status == 200
        merged = wait_until(lambda: (s := stats(admin)) and s["requests"] == 30 and s, "merged stats")
        assert sum(b["requests"] for b in merged["backends"]) == 30
        # the runtime API: reads show the merged figures, changes are refused (each worker has its own state)
        listed = get(admin, "/api/v1/backends").json()["backends"]
        assert [(b["id"], b["state"]) for b in listed] == [(f"{HOST}:{port}", "enabled") for port in demo]
        assert get(admin, f"/api/v1/backends/{HOST}:{demo[0]}").json()["url"] == f"http://{HOST}:{demo[0]}"
        config = get(admin, "/api/v1/config").json()
        assert (config["workers"], config["backends"]) == (2, [f"http://{HOST}:{port}" for port in demo])
        refused = request(
            admin,
            "PATCH",
            f"/api/v1/backends/{HOST}:{demo[0]}",
            b'{"state": "draining"}',
            {"Content-Type": "application/json", "Authorization": "Bearer x"},
        )
        assert refused.status == 403
        assert "each worker process has its own backends and cache" in refused.json()["error"]
        first, second = merged["workers"]
        os.kill(first, signal.SIGKILL)
        restarted = wait_until(
            lambda: (w := stats(admin).get("workers", [])) and len(w) == 2 and first not in w and w,
            "a restarted worker",
        )
        assert second in restarted
        for _ in range(10):
            assert get(listen, "/").status == 200
    finally:
        status = proc.stop()
    assert status in (0, -signal.SIGTERM), proc.describe()
    assert "Traceback" not in proc.output(), proc.describe()
    for pid in (second, *restarted):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_need_a_tcp_listen_endpoint(tmp_path: Path) -> None:
    args = [
        script("twistd"),
        "-n",
        "--pidfile=",
        "powerlb",
        "--workers",
        "2",
        "--listen",
        f"unix:{tmp_path}/lb.sock",
        "--backend",
        "http://127.0.0.1:9",
    ]
    proc = Process(args, tmp_path / "bad.log", cwd=tmp_path, env=clean_env())
    status = proc.wait(15)
    assert status != 0
    assert "workers: several workers need a tcp: listen endpoint" in proc.output()
    assert "Traceback" not in proc.output()
