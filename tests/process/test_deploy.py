"""docs/deploy.md stays true: its systemd unit, install commands, configuration, log rotation and
workers snippet are read from the page and run against the real CLI (the ExecStart line, with
the paths moved into the test environment, and the signals of reload, rotation and stop)."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import yaml

from powerlb.config import config_from_mapping
from powerlb.workers import STOP_MARGIN
from tests.support import (
    HOST,
    REPO,
    Process,
    accepts,
    clean_env,
    get,
    script,
    start_server,
    stats,
    wait_until,
)

DOC = REPO / "docs" / "deploy.md"
#: Where the page puts the configuration file.
CONFIG_FILE = "/etc/powerlb/lb.yaml"
#: Seconds worker processes may take to start serving.
WORKER_START = 60.0


def block(name: str) -> str:
    """The fenced block after ``<!-- name -->`` on the page."""
    found = re.search(rf"<!-- {re.escape(name)} -->\n```[a-z]*\n(.*?)```", DOC.read_text(), re.S)
    assert found is not None, f"docs/deploy.md has no {name} block"
    return found.group(1)


def service() -> configparser.SectionProxy:
    """The unit's [Service] section."""
    unit = configparser.ConfigParser(interpolation=None, strict=True)
    unit.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    unit.read_string(block("powerlb.service"))
    return unit["Service"]


def install_commands() -> List[List[str]]:
    return [shlex.split(line) for line in block("install").splitlines() if line.strip()]


def documented_config() -> Dict[str, Any]:
    return yaml.safe_load(block("lb.yaml"))


def test_exec_start_runs_the_installed_twistd_in_the_foreground_on_the_config_file() -> None:
    argv = shlex.split(service()["ExecStart"])
    commands = install_commands()
    venv = next(command[-1] for command in commands if command[1:3] == ["-m", "venv"])
    assert argv[0] == f"{venv}/bin/twistd"
    assert argv[1:] == ["-n", "--pidfile=", "powerlb", "--config", CONFIG_FILE]
    assert [f"{venv}/bin/pip", "install", "powerlb"] in commands
    assert [f"{venv}/bin/twistd", "--help", ">", "/dev/null"] in commands  # the plugin cache
    assert ["mkdir", "-p", str(Path(CONFIG_FILE).parent)] in commands


def test_unit_runs_as_its_own_user_with_only_the_bind_capability() -> None:
    unit = service()
    assert unit["User"] not in ("root", "0")
    useradd = next(command for command in install_commands() if command[0] == "useradd")
    assert useradd[-1] == unit["User"] and "--system" in useradd
    assert unit["AmbientCapabilities"] == unit["CapabilityBoundingSet"] == "CAP_NET_BIND_SERVICE"
    assert unit["NoNewPrivileges"] == "true"
    assert unit["Restart"] == "on-failure"
    assert unit["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_stop_timeout_covers_the_drain_and_the_workers_margin() -> None:
    unit = service()
    assert unit["KillMode"] == "mixed"  # SIGTERM to the main process, which stops the workers
    drain = config_from_mapping(documented_config()).drain_timeout
    assert unit["TimeoutStopSec"].endswith("s")
    assert float(unit["TimeoutStopSec"][:-1]) > drain + STOP_MARGIN


def test_the_access_log_lives_in_the_logs_directory_logrotate_rotates() -> None:
    access_log = documented_config()["access-log"]
    assert Path(access_log).parent == Path("/var/log") / service()["LogsDirectory"]
    rotate = block("logrotate")
    assert rotate.startswith(f"{access_log} {{")
    assert "systemctl kill --kill-whom=main --signal=SIGUSR1 powerlb.service" in rotate


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    unit = block("powerlb.service").replace(shlex.split(service()["ExecStart"])[0], script("twistd"))
    (tmp_path / "powerlb.service").write_text(unit, encoding="utf-8")
    done = subprocess.run(
        ["systemd-analyze", "verify", "./powerlb.service"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")


def _postrotate_signal() -> signal.Signals:
    found = re.search(r"--signal=(SIG[A-Z0-9]+)", block("logrotate"))
    assert found is not None
    return signal.Signals[found.group(1)]


@pytest.mark.parametrize("workers", [None, "workers"], ids=["one process", "workers"])
def test_the_unit_commands_start_reload_rotate_and_stop_powerlb(
    tmp_path: Path, demo_backends: Any, workers: Optional[str]
) -> None:
    b1, b2 = demo_backends(2)
    config_file = tmp_path / "lb.yaml"
    access_log = tmp_path / "access.log"
    settings = documented_config()
    if workers:
        settings.update(yaml.safe_load(block(workers)))
        settings["workers"] = 2  # the page's figure is for a real machine
    argv = shlex.split(service()["ExecStart"])
    argv = [script("twistd"), *(str(config_file) if arg == CONFIG_FILE else arg for arg in argv[1:])]

    def write(ports: List[int], backends: List[int]) -> None:
        settings["listen"] = f"tcp:{ports[0]}:interface={HOST}"
        settings["admin"] = f"tcp:{ports[1]}:interface={HOST}"
        settings["backends"] = [f"http://{HOST}:{port}" for port in backends]
        settings["access-log"] = str(access_log)
        config_file.write_text(yaml.safe_dump(settings), encoding="utf-8")

    def make(ports: List[int]) -> Process:
        write(ports, [b1])
        return Process(argv, tmp_path / "twistd.log", cwd=tmp_path, env=clean_env())

    def ready(ports: List[int]) -> bool:
        """Started: the ports are bound and, with workers, every worker process is started."""
        started = len(stats(ports[1]).get("workers", [None])) == settings.get("workers", 1)
        return accepts(ports[0]) and started

    proc, ports = start_server(make, 2, ready)
    listen, admin = ports
    try:
        # Serving: with workers, once one has reported (it accepts by then). PyPy workers take a while.
        wait_until(lambda: stats(admin).get("backends"), "the first worker report", timeout=WORKER_START)
        assert get(listen, "/before").status == 200
        # systemctl reload: ExecReload with $MAINPID.
        write(ports, [b1, b2])
        reload = [str(proc.pid) if arg == "$MAINPID" else arg for arg in shlex.split(service()["ExecReload"])]
        subprocess.run(reload, check=True, timeout=10)
        urls = [f"http://{HOST}:{b1}", f"http://{HOST}:{b2}"]
        wait_until(lambda: [b["url"] for b in stats(admin)["backends"]] == urls, "the reload")
        # logrotate: rename, then the postrotate signal to the main process.
        wait_until(lambda: "/before" in access_log.read_text(), "the first access log line")
        rotated = access_log.rename(tmp_path / "access.log.1")
        os.kill(proc.pid, _postrotate_signal())
        wait_until(access_log.exists, "the reopened access log")
        assert get(listen, "/after").status == 200
        wait_until(lambda: "/after" in access_log.read_text(), "a line in the new file")
        # systemctl stop: SIGTERM to the main process (KillMode=mixed), within TimeoutStopSec.
        os.kill(proc.pid, signal.SIGTERM)
        status = proc.wait(float(service()["TimeoutStopSec"][:-1]))
    finally:
        proc.stop()
    assert status in (0, -signal.SIGTERM), proc.describe()
    assert "/after" not in rotated.read_text()
    assert "Traceback" not in proc.output(), proc.describe()
