"""twistd powerlb reopens its access log on SIGUSR1 (log rotation)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

from tests.support import get, start_twistd_powerlb, wait_until


def test_twistd_reopens_the_access_log_on_sigusr1(tmp_path: Path, demo_backends: Any) -> None:
    (backend,) = demo_backends(1)
    path = tmp_path / "access.log"
    proc, (listen, _) = start_twistd_powerlb(tmp_path, [backend], "--access-log", str(path))
    try:
        assert get(listen, "/before").status == 200
        wait_until(lambda: path.exists() and "/before" in path.read_text(), "the first line")
        rotated = path.rename(tmp_path / "access.log.1")
        os.kill(proc.pid, signal.SIGUSR1)
        wait_until(path.exists, "the reopened access log")
        assert get(listen, "/after").status == 200
        wait_until(lambda: "/after" in path.read_text(), "a line in the new file")
    finally:
        status = proc.stop()
    assert status in (0, -signal.SIGTERM), proc.describe()
    assert "/after" not in rotated.read_text()
    assert "Traceback" not in proc.output(), proc.describe()
