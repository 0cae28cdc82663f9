"""examples/tour.sh, the README's quick tour (test_readme.py checks it is quoted verbatim), runs as
written: metrics, then a drain with powerlb-ctl."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.support import REPO, clean_env, free_ports

TOUR = REPO / "examples" / "tour.sh"


def test_tour_runs_and_the_drained_backend_gets_no_new_requests() -> None:
    lb, admin, *backends = free_ports(5)
    env = {
        **clean_env(),
        "BIN": str(Path(sys.executable).parent),
        "LB_PORT": str(lb),
        "ADMIN_PORT": str(admin),
        "BACKEND_PORTS": ",".join(map(str, backends)),
    }
    done = subprocess.run(["bash", str(TOUR)], cwd=REPO, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for port in backends:
        assert f'powerlb_backend_up{{backend="http://127.0.0.1:{port}",pool="default"}} 1.0' in out
    assert len(re.findall(r"^powerlb_requests_total\{.*code=\"2xx\"\} 2\.0$", out, re.M)) == 3
    first = f"127.0.0.1:{backends[0]}"
    assert f"{first} is draining" in out
    answered = [int(line) for line in out.splitlines() if line.isdigit()]
    assert len(answered) == 6 and backends[0] not in answered and set(answered) == set(backends[1:])
    assert re.search(rf"^{re.escape(first)}\s+draining\s+up\s", out, re.M)
    assert f"{first} is enabled again" in out
