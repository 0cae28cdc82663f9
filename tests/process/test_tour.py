"""examples/tour.sh, the README's quick tour, runs as written: metrics, then a drain with powerlb-ctl."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import List

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "examples" / "tour.sh"


def _free_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def test_readme_quotes_the_tour_verbatim() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    opening = "<!-- examples/tour.sh -->\n```sh\n"
    start = readme.index(opening) + len(opening)
    end = readme.index("```\n<!-- end examples/tour.sh -->")
    assert readme[start:end] == TOUR.read_text(encoding="utf-8")


def test_tour_runs_and_the_drained_backend_gets_no_new_requests() -> None:
    lb, admin, *backends = _free_ports(5)
    env = {
        **os.environ,
        "BIN": str(Path(sys.executable).parent),
        "LB_PORT": str(lb),
        "ADMIN_PORT": str(admin),
        "BACKEND_PORTS": ",".join(map(str, backends)),
    }
    done = subprocess.run(["bash", str(TOUR)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for port in backends:
        assert f'powerlb_backend_up{{backend="http://127.0.0.1:{port}"}} 1.0' in out
    assert len(re.findall(r"^powerlb_requests_total\{.*code=\"2xx\"\} 2\.0$", out, re.M)) == 3
    first = f"127.0.0.1:{backends[0]}"
    assert f"{first} is draining" in out
    answered = [int(line) for line in out.splitlines() if line.isdigit()]
    assert len(answered) == 6 and backends[0] not in answered and set(answered) == set(backends[1:])
    assert re.search(rf"^{re.escape(first)}\s+draining\s+up\s", out, re.M)
    assert f"{first} is enabled again" in out
