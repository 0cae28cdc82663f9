"""``--workers``: several processes on one socket, merged stats, a dead worker restarted."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import Any, Dict, List

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import (
    HOST,
    Process,
    accepts,
    clean_env,
    get,
    request,
    start_twistd_powerlb,
    stats,
    twistd,
    wait_until,
)

ACCESS_LINE = re.compile(
    r'127\.0\.0\.1 - - \[[^\]]+\] "GET / HTTP/1\.1" 200 \d+ "-" "-" '
    r"upstream=127\.0\.0\.1:\d+ upstream_time=\d+\.\d{3} cache=MISS request_id=[0-9a-f]{32}"
)


@pytest.fixture
def demo(demo_backends: Any) -> List[int]:
    """Two demo backends' ports."""
    return demo_backends(2)


def series(admin: int) -> Dict[str, Any]:
    """The dashboard's series of pool ``default`` (all the backends) from the admin port."""
    return get(admin, "/api/v1/series").json()["pools"].get("default", {"at": [], "rps": []})


def test_two_workers_share_the_socket_and_report_merged_stats(tmp_path: Path, demo: List[int]) -> None:
    def ready(ports: List[int]) -> bool:
        return accepts(ports[0]) and len(stats(ports[1]).get("workers", [])) == 2

    options = ("--workers", "2", "--access-log", "-")
    proc, (listen, admin) = start_twistd_powerlb(tmp_path, demo, *options, ready=ready)
    try:
        for _ in range(30):
            assert get(listen, "/").status == 200
        merged = wait_until(lambda: (s := stats(admin)) and s["requests"] == 30 and s, "merged stats")
        assert sum(b["requests"] for b in merged["backends"]) == 30
        # the runtime API: reads show the merged figures; changes need the admin token
        # (tests/process/test_workers_control.py makes them)
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
        assert "set admin-token" in refused.json()["error"]
        metrics = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(get(admin, "/metrics").body.decode())
            for sample in family.samples
        }
        assert sum(v for (name, _), v in metrics.items() if name == "powerlb_requests_total") == 30
        latency = [v for (name, _), v in metrics.items() if name == "powerlb_upstream_response_seconds_count"]
        assert len(latency) == 2 and sum(latency) == 30
        # the dashboard's series, sampled every 2 s from the merged stats
        charted = wait_until(lambda: (s := series(admin)) and any(s["rps"]) and s, "requests in the series")
        assert set(charted["error_rate"]) <= {None, 0.0}
        first, second = merged["workers"]
        os.kill(first, signal.SIGKILL)
        restarted = wait_until(
            lambda: (w := stats(admin).get("workers", [])) and len(w) == 2 and first not in w and w,
            "a restarted worker",
        )
        assert second in restarted
        for _ in range(10):
            assert get(listen, "/").status == 200
        # the killed worker's counts left the merged sums: that step adds nothing, never a negative rate
        later = wait_until(
            lambda: (s := series(admin)) and len(s["at"]) > len(charted["at"]) + 1 and s, "samples"
        )
        assert min(later["rps"]) >= 0 and set(later["error_rate"]) <= {None, 0.0}
    finally:
        status = proc.stop()
    assert status in (0, -signal.SIGTERM), proc.describe()
    assert "Traceback" not in proc.output(), proc.describe()
    assert "unreadable line" not in proc.output(), proc.describe()
    # Each worker wrote its access log to the main process's stdout; a killed worker's unwritten
    # lines are lost, the rest are whole.
    access = [line for line in proc.output().splitlines() if " cache=" in line]
    assert 10 <= len(access) <= 40, proc.describe()
    assert all(ACCESS_LINE.fullmatch(line) for line in access), access
    for pid in (second, *restarted):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_workers_need_a_tcp_listen_endpoint(tmp_path: Path) -> None:
    args = twistd(
        "powerlb",
        "--workers",
        "2",
        "--listen",
        f"unix:{tmp_path}/lb.sock",
        "--backend",
        "http://127.0.0.1:9",
    )
    proc = Process(args, tmp_path / "bad.log", cwd=tmp_path, env=clean_env())
    status = proc.wait(15)
    assert status != 0
    assert "workers: several workers need a tcp: listen endpoint" in proc.output()
    assert "Traceback" not in proc.output()
