"""Health checks of powerlb run as ``twistd``, in front of an app that has no health endpoint."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List

from tests.support import (
    HOST,
    Process,
    accepts,
    clean_env,
    get,
    start_server,
    start_twistd_powerlb,
    stats,
    wait_until,
)


def test_twistd_in_front_of_an_ordinary_app_keeps_serving(tmp_path: Path) -> None:
    """The first-contact command: twistd -n powerlb --backend an app without /health."""

    def make(ports: List[int]) -> Process:
        args = [sys.executable, "-m", "http.server", "--bind", HOST, str(ports[0])]
        return Process(args, tmp_path / "app.log", cwd=tmp_path, env=clean_env())

    app, (app_port,) = start_server(make, 1, lambda ports: accepts(ports[0]))
    try:
        assert get(app_port, "/health").status == 404
        lb, (listen, admin) = start_twistd_powerlb(
            tmp_path, [app_port], "--health-interval=0.1", "--health-fall=1", "--health-timeout=1"
        )
        try:

            def checked() -> bool:
                return stats(admin)["backends"][0]["checks"]["pass"] >= 5  # far past health-fall

            wait_until(checked, "five passed TCP checks")
            assert get(listen, "/").status == 200
            backend = stats(admin)["backends"][0]
            assert (backend["healthy"], backend["last_check"], backend["checks"]["fail"]) == (
                True,
                "connected",
                0,
            )
            assert "DOWN" not in lb.output()
        finally:
            lb.stop()
    finally:
        app.stop()
