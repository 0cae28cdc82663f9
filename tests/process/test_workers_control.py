"""``--workers 2`` is one balancer: API changes and ``PURGE`` reach every worker (real twistd and sockets)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any, Dict, List

from tests.support import HOST, clean_env, get, request, script, start_twistd_powerlb, stats, wait_until

TOKEN = "s3cret"


def change(admin: int, method: str, path: str, body: Any = None) -> Any:
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"}
    data = None if body is None else json.dumps(body).encode()
    return request(admin, method, f"/api/v1/{path}", data, headers, timeout=30)


def entries(admin: int) -> int:
    """How many responses the workers have stored between them."""
    return stats(admin)["cache"]["entries"]


def store_in_both_workers(listen: int, admin: int) -> None:
    """GET /cached on fresh connections until each of the two workers has stored it."""
    wait_until(
        lambda: get(listen, "/cached").status == 200 and entries(admin) == 2, "/cached in both workers"
    )


def test_changes_and_purges_reach_every_worker(tmp_path: Path, demo_backends: Any) -> None:
    *served, spare = demo_backends(3)
    proc, (listen, admin) = start_twistd_powerlb(
        tmp_path, served, "--workers", "2", "--admin-token", TOKEN, "--purge-allow", "127.0.0.1/32"
    )
    try:
        pids: List[int] = wait_until(
            lambda: (s := stats(admin)) and len(s["workers"]) == 2 and s.get("backends") and s["workers"],
            "two workers, with backends reported",
        )
        first, second = (f"{HOST}:{port}" for port in served)

        # weight and drain: every worker acknowledges, and what every connection is served by follows
        weighted = change(admin, "PATCH", f"backends/{first}", {"weight": 5})
        assert weighted.status == 200, weighted.body
        assert (weighted.json()["weight"], sorted(weighted.json()["workers"])) == (5, sorted(pids))
        ctl = [script("powerlb-ctl"), "--admin", f"http://{HOST}:{admin}", "--token", TOKEN, "drain", first]
        ran = subprocess.run(ctl, capture_output=True, timeout=30, env=clean_env(), check=False)
        assert ran.returncode == 0, ran.stderr
        drained = json.loads(ran.stdout)
        assert drained["state"] == "draining" and sorted(drained["workers"]) == sorted(pids)
        served_by = {get(listen, f"/after-drain/{n}").headers["x-backend"] for n in range(20)}
        assert served_by == {str(served[1])}

        # checked before anything is relayed
        assert change(admin, "PATCH", "backends/127.0.0.1:1", {"weight": 2}).status == 404
        assert change(admin, "PATCH", f"backends/{first}", {"weight": 0}).status == 400
        assert change(admin, "POST", "backends", {"url": f"http://{second}"}).status == 409

        # an API purge empties both workers' caches
        store_in_both_workers(listen, admin)
        purged = change(admin, "POST", "cache/purge", {"url": f"http://{HOST}:{listen}/cached"})
        assert purged.status == 200, purged.body
        assert purged.json() == {"purged": 2, "workers": purged.json()["workers"]}
        assert sorted(purged.json()["workers"]) == sorted(pids)
        assert entries(admin) == 0

        # a PURGE on the proxy lands on one worker, which has the supervisor relay it to the other
        store_in_both_workers(listen, admin)
        before = stats(admin)["cache"]["purged"]
        assert request(listen, "PURGE", "/cached").status == 200
        wait_until(lambda: entries(admin) == 0, "the PURGE applied by both workers")
        assert stats(admin)["cache"]["purged"] == before + 2

        # added, then a worker dies: its successor starts with the changes made so far
        added = change(admin, "POST", "backends", {"url": f"http://{HOST}:{spare}"})
        assert added.status == 201, added.body
        assert sorted(added.json()["workers"]) == sorted(pids)
        os.kill(pids[0], signal.SIGKILL)
        now: List[int] = wait_until(
            lambda: (w := stats(admin)["workers"]) and len(w) == 2 and pids[0] not in w and w, "a new worker"
        )
        disabled = change(admin, "PATCH", f"backends/{HOST}:{spare}", {"state": "disabled"})
        assert disabled.status == 200, disabled.body  # the new worker has the added backend
        assert sorted(disabled.json()["workers"]) == sorted(now)
        backends: Dict[str, Any] = {b["id"]: b for b in stats(admin)["backends"]}
        assert (backends[first]["weight"], backends[first]["state"]) == (5, "draining")
        served_by = {get(listen, f"/after-restart/{n}").headers["x-backend"] for n in range(20)}
        assert served_by == {str(served[1])}

        removed = change(admin, "DELETE", f"backends/{HOST}:{spare}")
        assert removed.status == 200, removed.body
        assert removed.json()["removed"] == f"{HOST}:{spare}"
        assert sorted(removed.json()["workers"]) == sorted(now)
        assert f"{HOST}:{spare}" not in [b["id"] for b in stats(admin)["backends"]]
    finally:
        status = proc.stop()
    assert status in (0, -signal.SIGTERM), proc.describe()
    assert "Traceback" not in proc.output(), proc.describe()
    assert "unreadable line" not in proc.output(), proc.describe()
