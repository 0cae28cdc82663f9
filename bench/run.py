"""Benchmark powerlb against HAProxy and nginx on 127.0.0.1; writes BENCHMARKS.md and bench/chart.png.

    make bench                          # 3 interleaved rounds of 8 s per row and setting
    make bench BENCH_ARGS=--quick       # 1 round of 2 s, to try it out
    .venv/bin/python bench/run.py --rounds 5 --duration 10

One nginx process with three server blocks plays the backends. Each row starts
its balancer, waits until it answers, checks the answer (cache rows: a real
hit), warms up for a second, measures with wrk and stops it again; rounds are
interleaved (for each round, every row). A final check streams 1 GiB through
powerlb (CPython) in each direction and samples its RSS.
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator, Sequence

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HOST = "127.0.0.1"
PYPY_VENV = ROOT / ".venv-pypy3"
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Binaries the benchmark needs, and the Debian packages that provide them.
TOOLS = {"wrk": "wrk", "haproxy": "haproxy", "nginx": "nginx", "pypy3": "pypy3", "curl": "curl"}
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin"])
WARMUP_SECONDS = 1
STOP_TIMEOUT = 10.0
READY_TIMEOUT = 30.0
DOWNLOAD_BYTES = 1024 * MIB
UPLOAD_BYTES = 1024 * MIB
MAX_BODY_OPTION = ("--max-body", "2GiB")  # above UPLOAD_BYTES, so the upload is not answered 413
RSS_SAMPLE_INTERVAL = 0.2
# A transfer is stopped (and reported as failed) once powerlb has grown by this much: a regression
# that buffers whole bodies must not eat the shared machine's memory.
MAX_GROWTH_BYTES = 1536 * MIB
TRANSFER_TIMEOUT = 300  # curl --max-time, seconds


METHOD = """\
- Backends: one nginx process (`master_process off`) with three server blocks on 127.0.0.1
  (`bench/nginx-backends.conf`) serving static files: `/nocache/...` with `Cache-Control: no-store`,
  `/cached/...` with `Cache-Control: max-age=3600`.
- Balancers, one process or thread each: HAProxy `nbthread 1`, roundrobin, `http-reuse always`
  (`bench/haproxy.cfg`); nginx master + 1 worker with upstream `keepalive` (`bench/nginx-balancer.conf`,
  `bench/nginx-cache.conf`); powerlb `twistd -n --pidfile= powerlb --listen tcp:PORT:interface=127.0.0.1
  --backend ... (3 times) --health-interval 5`, from `.venv` (CPython) or `.venv-pypy3` (PyPy), other
  options at their defaults. Proxied rows request `/nocache/...`, cache-hit rows `/cached/...`.
- Each measurement starts the balancer, polls until it answers 200, records its idle RSS (whole process
  tree, from `/proc/PID/statm`), checks the body size (and, for cache rows, that a second GET says `HIT`),
  warms up with wrk for 1 s, runs wrk once and stops the balancer. Rounds are interleaved: every round
  runs every setting and row.
- req/s, p50 and p99 (wrk `--latency`), CPU and RSS are medians over rounds; the ratios divide the
  median req/s by HAProxy's (and, for cache-hit rows, by nginx proxy_cache's) in the same setting.
- CPU us/req: utime + stime from `/proc/PID/stat`, summed over the balancer's process tree (nginx master
  and worker, powerlb workers), delta over the measured wrk run, divided by the requests wrk completed.
  The clock tick is {tick} ms, small next to a run of {duration} s.
- errors: wrk socket errors plus non-2xx/3xx responses, summed over rounds.
- Memory: a fresh powerlb per transfer; curl discards the response (`-o /dev/null`); powerlb's RSS is
  read every 0.2 s, and growth is the highest RSS minus the RSS just before the transfer. VmHWM (reset
  through `/proc/PID/clear_refs` first) also catches peaks between samples. The 1 GiB file is sparse,
  served by the nginx backends. The upload POSTs the same file with `curl -X POST -T` (read from disk
  as sent, with Content-Length) through a powerlb started with `{max_body}`, whose backend is a small
  HTTP server in run.py that reads each body to the end before it answers (nginx `return 200` answers
  first) and checks that every byte arrived. A transfer is stopped by PID and reported as failed if
  powerlb grows by more than {max_growth} MiB or curl takes over {transfer_timeout} s.
- Other load: the machine's busy CPU time (`/proc/stat` user + nice + system + steal) during each
  measured wrk run, minus the balancer's, the backends' and wrk's (and run.py's) own, as a share of all
  cores; well above 0 % means other work (e.g. someone's test suite) shared the machine during the run."""


class BenchError(Exception):
    """A process did not start, answer or measure as expected."""


@dataclass(frozen=True)
class Setting:
    title: str
    body: str  # file name under the backends' document root
    size: int
    connections: int


SETTINGS = (
    Setting("1 KiB body, 64 connections", "1k", 1024, 64),
    Setting("32 KiB body, 256 connections", "32k", 32 * 1024, 256),
)


@dataclass(frozen=True)
class Row:
    label: str
    kind: str  # "haproxy", "nginx-balancer", "nginx-cache" or "powerlb"
    cached: bool  # requests a cacheable path (cache hits) instead of an uncacheable one
    venv: Path | None = None  # powerlb rows: the venv whose twistd runs it
    options: tuple[str, ...] = ()  # extra powerlb options

    def path(self, setting: Setting) -> str:
        return f"/{'cached' if self.cached else 'nocache'}/{setting.body}"


@dataclass
class Sample:
    rps: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    cpu_us: float  # balancer CPU time (user + system, whole process tree) per request
    idle_rss_mib: float
    other_load_pct: float  # CPU used by processes outside the benchmark, % of all cores


@dataclass
class RowResult:
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def median(self, attr: str) -> float:
        return statistics.median(getattr(s, attr) for s in self.samples)


@dataclass
class MemoryResult:
    label: str
    size: int
    baseline_mib: float
    sampled_growth_mib: float
    peak_growth_mib: float  # from VmHWM, which sees spikes between samples
    seconds: float


@dataclass
class Context:
    tmp: Path
    www: Path
    backend_ports: tuple[int, ...]  # three for the rows; one for the upload's own backend
    tools: dict[str, str]
    backend_pid: int = 0  # the nginx backends, once started


def summary(err: BenchError) -> str:
    """The first line of an error and, when it quotes a log, the log's last line."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


# --- processes -------------------------------------------------------------------------------------------


def proc_stat(pid: int) -> list[str]:
    """Fields of /proc/PID/stat from field 3 (state) on, so field N is at index N - 3."""
    data = Path(f"/proc/{pid}/stat").read_text()
    return data[data.rindex(")") + 2 :].split()


def process_tree(pid: int) -> list[int]:
    """PID and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(proc_stat(int(entry.name))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def tree_cpu_seconds(pid: int) -> float:
    ticks = 0
    for member in process_tree(pid):
        try:
            fields = proc_stat(member)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def system_busy_seconds() -> float:
    """CPU time all cores spent in processes since boot (user, nice, system) or stolen by the host.

    irq and softirq time is left out: loopback traffic of the benchmark itself lands there."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + steal) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    """CPU time of run.py and of its children that have been waited for (wrk, curl)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE_SIZE


def tree_rss_mib(pid: int) -> float:
    return sum(rss_bytes(member) for member in process_tree(pid)) / MIB


def start_time(pid: int) -> str | None:
    try:
        return proc_stat(pid)[19]
    except OSError:
        return None


def signal_and_wait(pid: int, started: str, timeout: float) -> None:
    """SIGTERM a process that is not our child (a descendant left behind), SIGKILL after the timeout."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if start_time(pid) != started:
            return
        os.kill(pid, sig)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and start_time(pid) == started:
            time.sleep(0.05)


class Process:
    """A started process whose output goes to a log file; stop() ends it and its descendants by PID."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, cwd: Path) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                list(argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=cwd,
                start_new_session=True,  # Ctrl-C reaches only run.py, whose finally blocks stop us
            )
        self.pid = self.popen.pid

    def log_tail(self, lines: int = 15) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return "\n".join(f"    {line}" for line in text[-lines:])

    def stop(self) -> None:
        if self.popen.poll() is not None:
            return
        descendants = [(pid, start_time(pid)) for pid in process_tree(self.pid)[1:]]
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(STOP_TIMEOUT)
        for pid, started in descendants:
            if started is not None:
                signal_and_wait(pid, started, STOP_TIMEOUT)


@contextmanager
def running(name: str, argv: Sequence[str], ctx: Context) -> Iterator[Process]:
    workdir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=ctx.tmp))
    process = Process(name, argv, workdir / "output.log", workdir)
    try:
        yield process
    finally:
        process.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def wait_ready(process: Process, port: int, path: str) -> None:
    """Poll until GET path answers 200."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise BenchError(f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
        try:
            if http_get(port, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{process.name} not ready after {READY_TIMEOUT:.0f}s:\n{process.log_tail()}")


# --- configuration and start-up ----------------------------------------------------------------------------


def render(template: str, directory: Path, **values: object) -> Path:
    """Fill @NAME@ placeholders of bench/TEMPLATE and write the result into directory."""
    text = (BENCH / template).read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", str(value))
    leftover = re.findall(r"@[A-Z0-9_]+@", text)
    if leftover:
        raise BenchError(f"{template}: no value for {', '.join(sorted(set(leftover)))}")
    target = directory / template
    target.write_text(text)
    return target


def nginx_argv(ctx: Context, template: str, port: int) -> list[str]:
    directory = Path(tempfile.mkdtemp(prefix="nginx-conf-", dir=ctx.tmp))
    # A master running as root hands requests to workers running as `nobody`, who could not read our
    # temp directories: keep the worker as the current user.
    user = "user root;" if os.geteuid() == 0 else ""
    ports = {f"PORT{i}": p for i, p in enumerate(ctx.backend_ports, 1)}
    conf = render(template, directory, DIR=directory, WWW=ctx.www, PORT=port, USER=user, **ports)
    return [ctx.tools["nginx"], "-e", "stderr", "-p", str(directory), "-c", str(conf)]


def balancer_argv(row: Row, port: int, ctx: Context) -> list[str]:
    backends = [f"http://{HOST}:{p}" for p in ctx.backend_ports]
    if row.kind == "haproxy":
        directory = Path(tempfile.mkdtemp(prefix="haproxy-conf-", dir=ctx.tmp))
        ports = {f"PORT{i}": p for i, p in enumerate(ctx.backend_ports, 1)}
        conf = render("haproxy.cfg", directory, PORT=port, **ports)
        return [ctx.tools["haproxy"], "-f", str(conf), "-db"]
    if row.kind == "nginx-balancer":
        return nginx_argv(ctx, "nginx-balancer.conf", port)
    if row.kind == "nginx-cache":
        return nginx_argv(ctx, "nginx-cache.conf", port)
    assert row.venv is not None
    argv = [
        str(row.venv / "bin" / "twistd"),
        "-n",
        "--pidfile=",
        "powerlb",
        "--listen",
        f"tcp:{port}:interface={HOST}",
        "--health-interval",
        "5",
    ]
    for backend in backends:
        argv += ["--backend", backend]
    return [*argv, *row.options]


def check_answer(row: Row, port: int, setting: Setting) -> None:
    """The row really proxies the body, and cache rows really answer from their cache."""
    status, headers, body = http_get(port, row.path(setting))
    if row.cached:
        status, headers, body = http_get(port, row.path(setting))
        hit = headers.get("x-cache", headers.get("x-cache-status", ""))
        if hit != "HIT":
            raise BenchError(f"{row.label}: second GET was not a cache hit (headers {headers})")
    if status != 200 or len(body) != setting.size:
        raise BenchError(f"{row.label}: GET {row.path(setting)} gave {status} with {len(body)} bytes")


# --- measuring ---------------------------------------------------------------------------------------------

LATENCY_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def parse_latency(text: str, percentile: str) -> float:
    match = re.search(rf"^\s*{percentile}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    if match is None:
        raise BenchError(f"no {percentile}% latency in wrk output:\n{text}")
    return float(match.group(1)) * LATENCY_UNITS[match.group(2)]


def run_wrk(ctx: Context, url: str, connections: int, duration: int) -> tuple[float, int, int, float, float]:
    """req/s, requests, errors (socket errors + non-2xx/3xx), p50 ms, p99 ms."""
    argv = [
        ctx.tools["wrk"],
        "-t1",
        f"-c{connections}",
        f"-d{duration}s",
        "--latency",
        "--timeout",
        "10s",
        url,
    ]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 30, check=True)
    except subprocess.TimeoutExpired as err:
        raise BenchError(f"wrk did not finish within {duration + 30}s") from err
    except subprocess.CalledProcessError as err:
        raise BenchError(f"wrk failed: {err.stderr or err.stdout}") from err
    out = done.stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    requests = re.search(r"(\d+) requests in", out)
    if rps is None or requests is None:
        raise BenchError(f"unexpected wrk output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return (
        float(rps.group(1)),
        int(requests.group(1)),
        errors,
        parse_latency(out, "50"),
        parse_latency(out, "99"),
    )


def measure(ctx: Context, row: Row, setting: Setting, duration: int) -> Sample:
    port = free_port()
    with running(row.kind, balancer_argv(row, port, ctx), ctx) as process:
        wait_ready(process, port, row.path(setting))
        idle_rss = tree_rss_mib(process.pid)
        check_answer(row, port, setting)
        url = f"http://{HOST}:{port}{row.path(setting)}"
        run_wrk(ctx, url, setting.connections, WARMUP_SECONDS)
        cpu_before = tree_cpu_seconds(process.pid)
        ours_before = tree_cpu_seconds(ctx.backend_pid) + own_cpu_seconds()
        busy_before, began = system_busy_seconds(), time.monotonic()
        rps, requests, errors, p50, p99 = run_wrk(ctx, url, setting.connections, duration)
        busy, wall = system_busy_seconds() - busy_before, time.monotonic() - began
        cpu = tree_cpu_seconds(process.pid) - cpu_before
        ours = cpu + tree_cpu_seconds(ctx.backend_pid) + own_cpu_seconds() - ours_before
    other_pct = max(0.0, busy - ours) * 100 / (wall * (os.cpu_count() or 1))
    return Sample(rps, requests, errors, p50, p99, cpu * 1e6 / max(requests, 1), idle_rss, other_pct)


class UploadSink(ThreadingHTTPServer):
    """The upload's backend: reads every request body to the end, then answers 200 with its length.

    nginx's `return 200` answers before it has read a body, and a streaming proxy may then end the
    upload early; this backend answers only after the last byte, and counts the bytes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__((HOST, 0), UploadSinkHandler)
        self.received: list[int] = []


class UploadSinkHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: UploadSink

    def log_message(self, format: str, *args: object) -> None:
        pass

    def answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # health probes and readiness polls
        self.answer(b"ok\n")

    def discard(self, length: int) -> int:
        left = length
        while left:
            chunk = self.rfile.read(min(left, 256 * 1024))
            if not chunk:
                break
            left -= len(chunk)
        return length - left

    def do_POST(self) -> None:
        received = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                length = int(self.rfile.readline().split(b";")[0], 16)
                if length == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    break
                received += self.discard(length)
                self.rfile.readline()
        else:
            received = self.discard(int(self.headers.get("Content-Length", "0")))
        self.server.received.append(received)
        self.answer(f"{received}\n".encode())


@contextmanager
def upload_sink() -> Iterator[UploadSink]:
    sink = UploadSink()
    thread = threading.Thread(target=sink.serve_forever, name="upload-sink", daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()
        thread.join(STOP_TIMEOUT)


def stream_through_powerlb(
    ctx: Context, label: str, path: str, size: int, upload: Path | None
) -> MemoryResult:
    if upload is None:
        return stream_once(ctx, label, path, size, None, None)
    with upload_sink() as sink:
        port = int(sink.server_address[1])
        return stream_once(replace(ctx, backend_ports=(port,)), label, path, size, upload, sink)


def stream_once(
    ctx: Context, label: str, path: str, size: int, upload: Path | None, sink: UploadSink | None
) -> MemoryResult:
    """curl a large body through a fresh CPython powerlb, sampling powerlb's RSS every RSS_SAMPLE_INTERVAL."""
    port = free_port()
    venv = Path(sys.executable).parent.parent
    # The upload must not hit the request body limit (413) that newer powerlb versions have.
    options = MAX_BODY_OPTION if upload is not None and has_option(venv, "--max-body") else ()
    row = Row("powerlb", "powerlb", cached=False, venv=venv, options=options)
    label += f" with `{' '.join(options)}`" if options else ""
    body_args = (
        []
        if upload is None
        else ["-X", "POST", "-T", str(upload), "-H", "Expect:", "-H", "Content-Type: application/x-bench"]
    )
    argv = [
        ctx.tools["curl"],
        "-sS",
        "-o",
        "/dev/null",
        "--max-time",
        str(TRANSFER_TIMEOUT),
        "-w",
        "%{http_code} %{size_download} %{size_upload}",
        *body_args,
        f"http://{HOST}:{port}{path}",
    ]
    with running("powerlb-memory", balancer_argv(row, port, ctx), ctx) as lb:
        wait_ready(lb, port, "/nocache/1k")
        baseline = highest = rss_bytes(lb.pid)
        Path(f"/proc/{lb.pid}/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        started = time.monotonic()
        with running("curl", argv, ctx) as client:
            while client.popen.poll() is None:
                highest = max(highest, rss_bytes(lb.pid))
                if highest - baseline > MAX_GROWTH_BYTES:
                    client.stop()
                    raise BenchError(
                        f"{label}: stopped, powerlb grew by {(highest - baseline) / MIB:.0f} MiB "
                        f"(limit {MAX_GROWTH_BYTES // MIB} MiB)"
                    )
                time.sleep(RSS_SAMPLE_INTERVAL)
            seconds = time.monotonic() - started
            highest = max(highest, rss_bytes(lb.pid))
        hwm_kib = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{lb.pid}/status").read_text())
    # curl's -w line comes last; error messages (-sS) may precede it on the same line.
    written = re.findall(r"(\d{3}) (\d+) (\d+)", client.log.read_text(errors="replace"))
    status, downloaded, uploaded = written[-1] if written else ("-", "0", "0")
    moved = int(downloaded if upload is None else uploaded)
    if client.popen.returncode != 0 or status != "200" or moved != size:
        raise BenchError(
            f"{label}: curl exit {client.popen.returncode}, HTTP {status}, {moved} of {size} bytes:\n"
            f"{client.log_tail()}"
        )
    if sink is not None and sink.received[-1:] != [size]:
        raise BenchError(f"{label}: the backend received {sink.received} bytes, not {size}")
    peak = int(hwm_kib.group(1)) * 1024 if hwm_kib else highest
    return MemoryResult(
        label, size, baseline / MIB, (highest - baseline) / MIB, (peak - baseline) / MIB, seconds
    )


def memory_checks(ctx: Context) -> tuple[list[MemoryResult], list[str]]:
    """The streaming transfers that worked, and one line per transfer that failed."""
    upload = ctx.www / "1g"  # sparse, DOWNLOAD_BYTES == UPLOAD_BYTES
    transfers = [
        ("download 1 GiB, uncacheable (`no-store`)", "/nocache/1g", DOWNLOAD_BYTES, None),
        ("download 1 GiB, cacheable but over `--cache-max-object`", "/cached/1g", DOWNLOAD_BYTES, None),
        ("upload 1 GiB (`curl -X POST -T file`)", "/upload", UPLOAD_BYTES, upload),
    ]
    results, failures = [], []
    for label, path, size, body in transfers:
        try:
            result = stream_through_powerlb(ctx, label, path, size, body)
        except BenchError as err:
            failures.append(summary(err))  # starts with the label
            print(f"memory: {label}: FAILED: {err}", flush=True)
            continue
        results.append(result)
        print(
            f"memory: {label}: +{result.sampled_growth_mib:.1f} MiB sampled, +{result.peak_growth_mib:.1f} "
            f"MiB peak (VmHWM), {size / MIB / result.seconds:.0f} MiB/s",
            flush=True,
        )
    return results, failures


# --- environment -------------------------------------------------------------------------------------------


def ensure_tools() -> dict[str, str]:
    missing = [name for name in TOOLS if shutil.which(name, path=SBIN_PATH) is None]
    if missing:
        print(f"installing {', '.join(TOOLS[name] for name in missing)} with apt-get", flush=True)
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run([*sudo, "apt-get", "update"], check=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", *sorted(set(TOOLS.values()))], check=True)
    found = {name: shutil.which(name, path=SBIN_PATH) for name in TOOLS}
    if None in found.values():
        raise SystemExit(f"still missing after apt-get: {[n for n, p in found.items() if p is None]}")
    return {name: str(path) for name, path in found.items()}


def ensure_pypy_venv() -> None:
    subprocess.run(["make", ".venv-pypy3/.installed", "PYTHON=pypy3"], cwd=ROOT, check=True, timeout=1800)


def command_output(argv: Sequence[str]) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=120)
    return (done.stdout + done.stderr).strip()


def has_option(venv: Path, option: str) -> bool:
    """Whether `twistd powerlb --help` of this venv lists the option (powerlb's options still grow)."""
    return f"{option}=" in command_output([str(venv / "bin" / "twistd"), "powerlb", "--help"]).split()


def machine_description(tools: dict[str, str]) -> list[tuple[str, str]]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    pyver = "import sys, twisted; print(sys.version.split()[0], '/ Twisted', twisted.__version__)"
    commit = command_output(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"])
    dirty = command_output(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    return [
        ("nproc", command_output(["nproc"])),
        ("CPU", cpu.group(1) if cpu else "unknown"),
        ("memory", f"{int(mem.group(1)) // 1024} MiB" if mem else "unknown"),
        ("kernel", platform.release()),
        ("wrk", command_output([tools["wrk"], "-v"]).splitlines()[0].split(" Copyright")[0]),
        ("HAProxy", command_output([tools["haproxy"], "-v"]).splitlines()[0]),
        ("nginx", command_output([tools["nginx"], "-v"])),
        ("CPython / Twisted", command_output([sys.executable, "-c", pyver])),
        (
            "PyPy / Twisted",
            command_output(
                [
                    str(PYPY_VENV / "bin" / "python"),
                    "-c",
                    pyver + "; print('PyPy', '.'.join(map(str, sys.pypy_version_info[:3])))",
                ]
            ).replace("\n", ", "),
        ),
        ("powerlb", f"{commit}{' (plus uncommitted changes)' if dirty else ''}"),
    ]


# --- report ------------------------------------------------------------------------------------------------


def ratio(value: float, reference: RowResult | None) -> str:
    if reference is None or not reference.samples:
        return "-"
    return f"{value / reference.median('rps'):.2f}x"


def results_table(rows: Sequence[Row], results: dict[str, RowResult]) -> list[str]:
    lines = [
        "| row | req/s | vs HAProxy | vs nginx cache | p50 ms | p99 ms | CPU us/req | idle RSS MiB "
        "| errors | other load % | req/s per round |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    haproxy = results.get("HAProxy")
    nginx_cache = results.get("nginx proxy_cache (hits)")
    for row in rows:
        result = results[row.label]
        if not result.samples:
            lines.append(f"| {row.label} | failed: {'; '.join(result.failures)[:200]} |" + " - |" * 9)
            continue
        rps = result.median("rps")
        rounds = ", ".join(f"{s.rps:,.0f}" for s in result.samples)
        failures = f" ({len(result.failures)} failed)" if result.failures else ""
        lines.append(
            f"| {row.label} | {rps:,.0f} | {ratio(rps, haproxy)} "
            f"| {ratio(rps, nginx_cache) if row.cached else '-'} "
            f"| {result.median('p50_ms'):.2f} | {result.median('p99_ms'):.2f} "
            f"| {result.median('cpu_us'):.1f} "
            f"| {result.median('idle_rss_mib'):.1f} | {sum(s.errors for s in result.samples)} "
            f"| {result.median('other_load_pct'):.0f} | {rounds}{failures} |"
        )
    return lines


def write_chart(
    rows: Sequence[Row], results: dict[tuple[str, str], RowResult], path: Path, note: str
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    fig, ax = plt.subplots(figsize=(12, 1.1 * len(rows) + 2))
    height = 0.38
    colors = ("#4c72b0", "#dd8452")
    for i, setting in enumerate(SETTINGS):
        values = [results[setting.title, row.label] for row in rows]
        medians = [r.median("rps") if r.samples else 0.0 for r in values]
        positions = [n + (i - 0.5) * height for n in range(len(rows))]
        bars = ax.barh(positions, medians, height, label=setting.title, color=colors[i])
        ax.bar_label(bars, labels=[f"{m:,.0f}" if m else "failed" for m in medians], padding=4, fontsize=9)
    ax.set_yticks(range(len(rows)), [row.label for row in rows], fontsize=10)
    ax.invert_yaxis()
    ax.set_xlabel("requests per second (median of rounds; higher is better)")
    ax.set_title(f"powerlb vs HAProxy and nginx on 127.0.0.1 — {note}", fontsize=11)
    ax.margins(x=0.15)
    ax.grid(axis="x", alpha=0.3)
    ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


SHARED_LOAD_PCT = 5.0  # median other load above which the report says the machine was shared


def load_note(results: dict[tuple[str, str], RowResult]) -> list[str]:
    """A paragraph on CPU used by other processes during the measured runs."""
    loads = sorted(s.other_load_pct for r in results.values() for s in r.samples)
    if not loads:
        return []
    text = (
        f"Other load (CPU used outside the benchmark during the measured wrk runs, % of all cores): "
        f"median {statistics.median(loads):.0f} %, max {loads[-1]:.0f} %."
    )
    if statistics.median(loads) >= SHARED_LOAD_PCT:
        text += (
            " **This run shared the machine with other work**, so absolute figures are lower and noisier"
            " than on a quiet machine; compare rows within this run (rounds are interleaved)."
        )
    elif loads[-1] >= 4 * SHARED_LOAD_PCT:
        text += " Some measurements shared the machine with other work (see the other load column)."
    return [text, ""]


def write_report(
    rows: Sequence[Row],
    results: dict[tuple[str, str], RowResult],
    memory: list[MemoryResult],
    memory_failures: list[str],
    skipped: list[str],
    machine: list[tuple[str, str]],
    args: argparse.Namespace,
    elapsed: float,
) -> None:
    command = "make bench" + (f" BENCH_ARGS='{' '.join(sys.argv[1:])}'" if sys.argv[1:] else "")
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/run.py`; rerun with:",
        "",
        "```sh",
        "make bench                      # full run, as below",
        "make bench BENCH_ARGS=--quick   # 1 round of 2 s, to try it",
        "```",
        "",
        f"This run: `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{args.rounds} interleaved round(s) of {args.duration} s per row and setting, "
        f"total runtime {elapsed / 60:.1f} min.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in machine),
        "",
        "wrk, the balancer under test and the backends share these cores.",
        "",
        *load_note(results),
        "![req/s per row](bench/chart.png)",
        "",
        *(f"Skipped: {row}." for row in skipped),
        *([""] if skipped else []),
    ]
    for setting in SETTINGS:
        lines += [
            f"## {setting.title}",
            "",
            f"`wrk -t1 -c{setting.connections} -d{args.duration}s --latency`, "
            f"body {setting.size // 1024} KiB.",
            "",
            *results_table(rows, {row.label: results[setting.title, row.label] for row in rows}),
            "",
        ]
    lines += [
        "## Memory while streaming (powerlb, CPython)",
        "",
        "| transfer | idle RSS MiB | max growth MiB (sampled every 0.2 s) | peak growth MiB (VmHWM) "
        "| MiB/s |",
        "|---|--:|--:|--:|--:|",
        *(
            f"| {m.label} | {m.baseline_mib:.1f} | {m.sampled_growth_mib:.1f} | {m.peak_growth_mib:.1f} "
            f"| {m.size / MIB / m.seconds:.0f} |"
            for m in memory
        ),
        "",
        *(f"- failed: {failure}" for failure in memory_failures),
        *([""] if memory_failures else []),
        "## How the figures are computed",
        "",
        METHOD.format(
            duration=args.duration,
            tick=1000 // CLOCK_TICKS,
            max_body=" ".join(MAX_BODY_OPTION),
            max_growth=MAX_GROWTH_BYTES // MIB,
            transfer_timeout=TRANSFER_TIMEOUT,
        ),
    ]
    (ROOT / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")


# --- main --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round of 2 s (overrides --rounds/--duration)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run (default 8)")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration = 1, 2
    if args.rounds < 1 or args.duration < 1:
        parser.error("--rounds and --duration must be at least 1")
    return args


def benchmark_rows() -> tuple[list[Row], list[str]]:
    cpython = Path(sys.executable).parent.parent
    rows = [
        Row("HAProxy", "haproxy", cached=False),
        Row("nginx balancer", "nginx-balancer", cached=False),
        Row("nginx proxy_cache (hits)", "nginx-cache", cached=True),
        Row("powerlb CPython", "powerlb", cached=False, venv=cpython),
        Row("powerlb CPython (hits)", "powerlb", cached=True, venv=cpython),
        Row("powerlb PyPy", "powerlb", cached=False, venv=PYPY_VENV),
        Row("powerlb PyPy (hits)", "powerlb", cached=True, venv=PYPY_VENV),
    ]
    skipped = []
    if has_option(cpython, "--workers"):
        rows.append(
            Row(
                "powerlb CPython --workers 2",
                "powerlb",
                cached=False,
                venv=cpython,
                options=("--workers", "2"),
            )
        )
    else:
        skipped.append("`powerlb CPython --workers 2` (`twistd powerlb --help` lists no `--workers`)")
    return rows, skipped


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    if platform.python_implementation() != "CPython":
        raise SystemExit("run bench/run.py with the CPython venv (make bench)")
    began = time.monotonic()
    tools = ensure_tools()
    ensure_pypy_venv()
    rows, skipped = benchmark_rows()
    machine = machine_description(tools)
    results = {(s.title, row.label): RowResult() for s in SETTINGS for row in rows}
    with tempfile.TemporaryDirectory(prefix="powerlb-bench-") as tmp:
        www = Path(tmp) / "www"
        www.mkdir()
        for setting in SETTINGS:
            (www / setting.body).write_bytes(b"x" * setting.size)
        with (www / "1g").open("wb") as f:
            f.truncate(DOWNLOAD_BYTES)  # sparse: costs no disk
        ports = (free_port(), free_port(), free_port())
        ctx = Context(Path(tmp), www, ports, tools)
        with running("nginx-backends", nginx_argv(ctx, "nginx-backends.conf", 0), ctx) as backends:
            ctx.backend_pid = backends.pid
            for port in ports:
                wait_ready(backends, port, "/health")
            for round_no in range(1, args.rounds + 1):
                for setting in SETTINGS:
                    for row in rows:
                        result = results[setting.title, row.label]
                        prefix = f"[round {round_no}/{args.rounds}] {setting.title:<29} {row.label:<28}"
                        try:
                            sample = measure(ctx, row, setting, args.duration)
                        except BenchError as err:
                            result.failures.append(summary(err))
                            print(f"{prefix} FAILED: {err}", flush=True)
                            continue
                        result.samples.append(sample)
                        print(
                            f"{prefix} {sample.rps:>9,.0f} req/s  p99 {sample.p99_ms:7.2f} ms  "
                            f"{sample.cpu_us:6.1f} µs/req  errors {sample.errors}  "
                            f"other load {sample.other_load_pct:.0f}%",
                            flush=True,
                        )
            memory, memory_failures = memory_checks(ctx)
    elapsed = time.monotonic() - began
    note = f"wrk -t1, {args.rounds} round(s) x {args.duration} s, {machine[0][1]} cores"
    write_chart(rows, results, BENCH / "chart.png", note)
    write_report(rows, results, memory, memory_failures, skipped, machine, args, elapsed)
    print(f"wrote BENCHMARKS.md and bench/chart.png; total runtime {elapsed:.0f} s ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main(sys.argv[1:])
