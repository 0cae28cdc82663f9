"""Benchmark powerlb against HAProxy, nginx and a baseline commit of itself on 127.0.0.1.

Writes BENCHMARKS.md and bench/chart.png (--output elsewhere for a trial run):

    make bench                          # 3 interleaved rounds of 5 s per row and setting (~12 min)
    make bench BENCH_ARGS=--quick       # 1 round of 2 s, to try it out
    make bench BENCH_ARGS="--rows proxied,hits --rounds 1 --output /tmp/bench.md"
    .venv/bin/python bench/run.py --baseline v1.0 --rounds 5 --duration 10

One nginx process with three server blocks plays the backends. Each row starts
its balancer, waits until it answers, checks the answer (cache rows: a real
hit), warms up for a second, measures with wrk and stops it again; rounds are
interleaved (for each round, every row). Every powerlb row runs twice, from
this tree and from the baseline commit (--baseline, installed into venvs of
its own under .bench/), so each row has a ratio to the baseline measured side
by side. Then powerlb (CPython, both trees) runs under callgrind for the
instructions per request, and streams 1 GiB in each direction while its RSS
is sampled.
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
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
from typing import Callable, Iterator, Sequence

import baseline as baseline_commit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
HOST = "127.0.0.1"
CPYTHON_VENV = Path(sys.executable).parent.parent
PYPY_VENV = ROOT / ".venv-pypy3"
REPORT = ROOT / "BENCHMARKS.md"
CHART = BENCH / "chart.png"
DEFAULT_BASELINE = "f202d20"
MIB = 1024 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Binaries the benchmark needs, and the Debian packages that provide them.
TOOLS = {
    "wrk": "wrk",
    "haproxy": "haproxy",
    "nginx": "nginx",
    "pypy3": "pypy3",
    "curl": "curl",
    "valgrind": "valgrind",
    "callgrind_control": "valgrind",
}
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
# callgrind: requests before counting (the cache fills, code paths warm up), start-up allowance (powerlb
# runs some 50 times slower under callgrind) and the time one request may take.
CALLGRIND_WARMUP = 100
CALLGRIND_READY_TIMEOUT = 300.0
CALLGRIND_REQUEST_TIMEOUT = 60.0


METHOD = """\
- Backends: one nginx process (`master_process off`) with three server blocks on 127.0.0.1
  (`bench/nginx-backends.conf`) serving static files: `/nocache/...` with `Cache-Control: no-store`,
  `/cached/...` with `Cache-Control: max-age=3600`.
- Balancers, one process or thread each: HAProxy `nbthread 1`, roundrobin, `http-reuse always`
  (`bench/haproxy.cfg`); nginx master + 1 worker with upstream `keepalive` (`bench/nginx-balancer.conf`,
  `bench/nginx-cache.conf`); powerlb `twistd -n --pidfile= powerlb --listen tcp:PORT:interface=127.0.0.1
  --backend ... (3 times) --health-interval 5`, from `.venv` (CPython) or `.venv-pypy3` (PyPy), other
  options at their defaults. This tree's modules are byte-compiled first (`compileall`), as pip compiles
  the baseline's install, so neither tree compiles its source at start-up. Proxied rows request
  `/nocache/...`, cache-hit rows `/cached/...`.
- Baseline: `--baseline REV` (default `{default_baseline}`) exports that commit with `git archive` into
  `.bench/baseline-<commit>/src` and installs it (not editable) into venvs of its own there, one per
  interpreter, built once per commit and reused. Each powerlb row runs from both trees, the baseline
  twin (`@REV`) right after it in every round, so both see the same machine at nearly the same time.
  **vs baseline** is the row's median req/s divided by its twin's; above 1.00x is faster.
- The routes row (`--rows routes`, this tree only) is the proxied row with `--config` of 50 routes
  (hosts, path prefixes, path regexes, header values no request has, then a catch-all that takes them
  all); its **vs baseline** divides by the proxied row of this tree (one catch-all route). Issue 12's goal:
  its CPU us/req at most 5 % above the proxied row's.
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
- Cost per request: CPU us/req is the CPU column of the 1 KiB rows (64 connections). Instructions per
  request come from a CPython powerlb (1 KiB body, health probes off) run under `valgrind
  --tool=callgrind`, one per tree: after start-up it gets {callgrind_warmup} requests per path (which also
  fills the cache), then, on one keep-alive connection from run.py, {callgrind_requests} and then
  {callgrind_requests_twice} requests on the proxied path, the same on the hit path, and the same on the
  `unique` path: the proxied path (`/unique/`) with an `X-Request-Id` of its own on each response, so that
  no two responses have the same header block (no CPU figure: callgrind only). Each batch is followed
  by `callgrind_control --dump` (which zeroes the counters). Instructions per request are the difference
  between a path's two batches divided by {callgrind_requests}, which cancels what a batch costs besides
  its requests. The count covers the powerlb process only (not nginx, not the client), and is
  independent of the machine's load, unlike CPU time.
- Memory: a fresh powerlb per transfer, from each tree; curl discards the response (`-o /dev/null`);
  powerlb's RSS is read every 0.2 s, and growth is the highest RSS minus the RSS just before the
  transfer. VmHWM (reset through `/proc/PID/clear_refs` first) also catches peaks between samples.
  The 1 GiB file is sparse, served by the nginx backends, and read once before the first transfer
  (so that every tree's transfers find it in the page cache). The upload POSTs the same file with
  `curl -X POST -T` (read from disk as sent, with Content-Length) through a powerlb started with
  `{max_body}`, whose backend is a small HTTP server in run.py that reads each body to the end before
  it answers (nginx `return 200` answers first) and checks that every byte arrived. A transfer is
  stopped by PID and reported as failed if powerlb grows by more than {max_growth} MiB or curl takes
  over {transfer_timeout} s.
- Other load: the machine's busy CPU time (`/proc/stat` user + nice + system + steal) during each
  measured wrk run, minus the balancer's, the backends' and wrk's (and run.py's) own, as a share of all
  cores; well above 0 % means other work (e.g. someone's test suite) shared the machine during the run."""


class BenchError(Exception):
    """A process did not start, answer or measure as expected."""


@dataclass(frozen=True)
class Setting:
    title: str
    body: str  # file name under the backends' document root; --settings selects by it
    size: int
    connections: int


SETTINGS = (
    Setting("1 KiB body, 64 connections", "1k", 1024, 64),
    Setting("32 KiB body, 256 connections", "32k", 32 * 1024, 256),
)


@dataclass(frozen=True)
class Row:
    label: str
    key: str  # the name --rows selects it by
    kind: str  # "haproxy", "nginx-balancer", "nginx-cache" or "powerlb"
    cached: bool  # requests a cacheable path (cache hits) instead of an uncacheable one
    venv: Path | None = None  # powerlb rows: the venv whose twistd runs it
    options: tuple[str, ...] = ()  # extra powerlb options
    baseline_label: str | None = None  # powerlb rows: the baseline row their "vs baseline" divides by

    def path(self, setting: Setting) -> str:
        return f"/{'cached' if self.cached else 'nocache'}/{setting.body}"


REFERENCE_ROWS = (
    Row("HAProxy", "haproxy", "haproxy", cached=False),
    Row("nginx balancer", "nginx", "nginx-balancer", cached=False),
    Row("nginx proxy_cache (hits)", "nginx-cache", "nginx-cache", cached=True),
)
# key, label, interpreter, cached, options: each runs once per tree (this one and the baseline).
POWERLB_ROWS = (
    ("proxied", "powerlb CPython", "cpython", False, ()),
    ("hits", "powerlb CPython (hits)", "cpython", True, ()),
    ("pypy", "powerlb PyPy", "pypy", False, ()),
    ("pypy-hits", "powerlb PyPy (hits)", "pypy", True, ()),
    ("workers", "powerlb CPython --workers 2", "cpython", False, ("--workers", "2")),
)
# The routes row (issue 12): the proxied row with ROUTE_COUNT routes of mixed kinds, only the last
# (a catch-all) matching; its "vs baseline" is this tree's proxied row (one catch-all route). The goal:
# CPU per request at most 5 % above it. This tree only (an older baseline may have no routes).
ROUTES_KEY = "routes"
ROUTES_LABEL = "powerlb CPython, 50 routes (last matches)"
ROUTE_COUNT = 50
# --rows keys beyond the wrk rows: the streaming memory checks and the callgrind counts.
EXTRA_KEYS = ("memory", "callgrind")
ROW_KEYS = (
    *(row.key for row in REFERENCE_ROWS),
    *(entry[0] for entry in POWERLB_ROWS),
    ROUTES_KEY,
    *EXTRA_KEYS,
)


@dataclass(frozen=True)
class Tree:
    """A powerlb under test: this working tree, or the baseline commit."""

    name: str  # "this tree" or "baseline f202d20"
    suffix: str  # appended to its row labels: "" or " @f202d20"
    venvs: dict[str, Path]  # "cpython" (always) and "pypy" (when PyPy rows run) -> venv


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
    tree: str
    size: int
    baseline_mib: float
    sampled_growth_mib: float
    peak_growth_mib: float  # from VmHWM, which sees spikes between samples
    seconds: float


@dataclass
class CallgrindResult:
    tree: str
    proxied: float  # instructions per request, uncacheable 1 KiB
    hits: float  # instructions per request, cache hits 1 KiB
    unique: float  # the proxied path, each response with a header block of its own (a request id)


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


def wait_ready(process: Process, port: int, path: str, timeout: float = READY_TIMEOUT) -> None:
    """Poll until GET path answers 200."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.popen.poll() is not None:
            raise BenchError(f"{process.name} exited with {process.popen.returncode}:\n{process.log_tail()}")
        try:
            if http_get(port, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise BenchError(f"{process.name} not ready after {timeout:.0f}s:\n{process.log_tail()}")


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
    if row.key == ROUTES_KEY:
        argv += ["--config", str(routes_config(Path(tempfile.mkdtemp(prefix="routes-", dir=ctx.tmp))))]
    return [*argv, *row.options]


def routes_config(directory: Path) -> Path:
    """A config file of ROUTE_COUNT routes to the pool ``default`` (the --backend ones): hosts, path
    prefixes, path regexes and header values no benchmark request has, then a catch-all."""
    kinds = (
        lambda i: f"host: app{i}.example.com",
        lambda i: f"path-prefix: /service{i}/",
        lambda i: f"path-regex: '^/v{i}/[a-z]+$'",
        lambda i: f"header: {{name: X-Tenant, value: t{i}}}",
    )
    lines = ["routes:"]
    lines += [f"  - {{{kinds[i % len(kinds)](i)}, pool: default}}" for i in range(ROUTE_COUNT - 1)]
    lines.append("  - {pool: default}")
    path = directory / "routes.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


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
    ctx: Context, tree: Tree, label: str, path: str, size: int, upload: Path | None
) -> MemoryResult:
    if upload is None:
        return stream_once(ctx, tree, label, path, size, None, None)
    with upload_sink() as sink:
        port = int(sink.server_address[1])
        return stream_once(replace(ctx, backend_ports=(port,)), tree, label, path, size, upload, sink)


def stream_once(
    ctx: Context,
    tree: Tree,
    label: str,
    path: str,
    size: int,
    upload: Path | None,
    sink: UploadSink | None,
) -> MemoryResult:
    """curl a large body through a fresh CPython powerlb, sampling powerlb's RSS every RSS_SAMPLE_INTERVAL."""
    port = free_port()
    venv = tree.venvs["cpython"]
    # The upload must not hit the request body limit (413) that newer powerlb versions have.
    options = MAX_BODY_OPTION if upload is not None and has_option(venv, "--max-body") else ()
    row = Row("powerlb", "memory", "powerlb", cached=False, venv=venv, options=options)
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
        label, tree.name, size, baseline / MIB, (highest - baseline) / MIB, (peak - baseline) / MIB, seconds
    )


def warm_page_cache(path: Path) -> None:
    """Read ``path`` once, so that no measured transfer is the one that fills the page cache: the
    first transfer of the 1 GiB file after a cold cache ran at half speed, whichever tree made it."""
    with path.open("rb") as f:
        while f.read(MIB):
            pass


def memory_checks(ctx: Context, tree: Tree) -> tuple[list[MemoryResult], list[str]]:
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
            result = stream_through_powerlb(ctx, tree, label, path, size, body)
        except BenchError as err:
            failures.append(f"{tree.name}: {summary(err)}")  # the summary starts with the label
            print(f"memory, {tree.name}: {label}: FAILED: {err}", flush=True)
            continue
        results.append(result)
        print(
            f"memory, {tree.name}: {label}: +{result.sampled_growth_mib:.1f} MiB sampled, "
            f"+{result.peak_growth_mib:.1f} MiB peak (VmHWM), {size / MIB / result.seconds:.0f} MiB/s",
            flush=True,
        )
    return results, failures


# --- callgrind ---------------------------------------------------------------------------------------------


def send_requests(port: int, path: str, count: int, size: int) -> None:
    """count GETs one after another on a keep-alive connection, each checked for 200 and the body size."""
    conn = http.client.HTTPConnection(HOST, port, timeout=CALLGRIND_REQUEST_TIMEOUT)
    try:
        for _ in range(count):
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read()
            if response.status != 200 or len(body) != size:
                raise BenchError(f"callgrind: GET {path} gave {response.status} with {len(body)} bytes")
    finally:
        conn.close()


def callgrind_dump(ctx: Context, pid: int, out: Path, number: int) -> int:
    """Have callgrind write dump number `number` (it then zeroes its counters); the instructions in it."""
    argv = [ctx.tools["callgrind_control"], "--dump", str(pid)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=CALLGRIND_REQUEST_TIMEOUT)
    dump = Path(f"{out}.{number}")
    if done.returncode != 0 or not dump.exists():
        raise BenchError(f"callgrind_control --dump {pid} wrote no {dump.name}: {done.stdout}{done.stderr}")
    totals = re.search(r"^(?:totals|summary):\s+(\d+)", dump.read_text(errors="replace"), re.M)
    if totals is None:
        raise BenchError(f"no instruction count in {dump}")
    return int(totals.group(1))


def callgrind_costs(ctx: Context, tree: Tree, requests: int) -> CallgrindResult:
    """Instructions per request of a CPython powerlb under callgrind, for the proxied and the hit path.

    After start-up and a warm-up (which also fills the cache), each path gets `requests` and then
    2 * `requests` GETs, each batch followed by a dump; the difference of the two dumps, divided by
    `requests`, cancels what a batch costs besides its requests (the dump itself, idle timers)."""
    setting = SETTINGS[0]
    venv = tree.venvs["cpython"]
    # No health probes during the counts: only the client's requests run.
    row = Row(
        "callgrind", "callgrind", "powerlb", cached=False, venv=venv, options=("--health-interval", "3600")
    )
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="callgrind-", dir=ctx.tmp))
    out = workdir / "callgrind.out"
    argv = [
        ctx.tools["valgrind"],
        "--tool=callgrind",
        f"--callgrind-out-file={out}",
        str(venv / "bin" / "python"),
        *balancer_argv(row, port, ctx),
    ]
    proxied = replace(row, cached=False).path(setting)
    paths = {
        "proxied": proxied,
        "hits": replace(row, cached=True).path(setting),
        # The backends add an X-Request-Id of their own to each of these responses (nginx-backends.conf).
        "unique": proxied.replace("/nocache/", "/unique/"),
    }
    per_request: dict[str, float] = {}
    with running("callgrind", argv, ctx) as process:
        wait_ready(process, port, proxied, CALLGRIND_READY_TIMEOUT)
        for path in paths.values():
            send_requests(port, path, CALLGRIND_WARMUP, setting.size)
        check_answer(replace(row, cached=True), port, setting)  # the hit path really answers from the cache
        dumps = 1
        callgrind_dump(ctx, process.pid, out, dumps)  # start-up and warm-up
        for name, path in paths.items():
            counts = []
            for count in (requests, 2 * requests):
                send_requests(port, path, count, setting.size)
                dumps += 1
                counts.append(callgrind_dump(ctx, process.pid, out, dumps))
            per_request[name] = (counts[1] - counts[0]) / requests
    return CallgrindResult(tree.name, per_request["proxied"], per_request["hits"], per_request["unique"])


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


def machine_description(tools: dict[str, str], trees: Sequence[Tree]) -> list[tuple[str, str]]:
    cpu = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    mem = re.search(r"^MemTotal:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
    pyver = "import sys, twisted; print(sys.version.split()[0], '/ Twisted', twisted.__version__)"
    pypyver = pyver + "; print('PyPy', '.'.join(map(str, sys.pypy_version_info[:3])))"
    commit = command_output(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"])
    dirty = command_output(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"])
    machine = [
        ("nproc", command_output(["nproc"])),
        ("CPU", cpu.group(1) if cpu else "unknown"),
        ("memory", f"{int(mem.group(1)) // 1024} MiB" if mem else "unknown"),
        ("kernel", platform.release()),
        ("wrk", command_output([tools["wrk"], "-v"]).splitlines()[0].split(" Copyright")[0]),
        ("HAProxy", command_output([tools["haproxy"], "-v"]).splitlines()[0]),
        ("nginx", command_output([tools["nginx"], "-v"])),
        ("valgrind", command_output([tools["valgrind"], "--version"])),
        ("CPython / Twisted", command_output([sys.executable, "-c", pyver])),
    ]
    if "pypy" in trees[0].venvs:
        pypy = command_output([str(trees[0].venvs["pypy"] / "bin" / "python"), "-c", pypyver])
        machine.append(("PyPy / Twisted", pypy.replace("\n", ", ")))
    machine.append(("powerlb", f"{commit}{' (plus uncommitted changes)' if dirty else ''}"))
    return machine


# --- report ------------------------------------------------------------------------------------------------


def ratio(value: float, reference: RowResult | None) -> str:
    if reference is None or not reference.samples:
        return "-"
    return f"{value / reference.median('rps'):.2f}x"


def results_table(rows: Sequence[Row], results: dict[str, RowResult]) -> list[str]:
    lines = [
        "| row | req/s | vs baseline | vs HAProxy | vs nginx cache | p50 ms | p99 ms | CPU us/req "
        "| idle RSS MiB | errors | other load % | req/s per round |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    haproxy = results.get("HAProxy")
    nginx_cache = results.get("nginx proxy_cache (hits)")
    for row in rows:
        result = results[row.label]
        if not result.samples:
            lines.append(f"| {row.label} | failed: {'; '.join(result.failures)[:200]} |" + " - |" * 10)
            continue
        rps = result.median("rps")
        baseline = results.get(row.baseline_label) if row.baseline_label else None
        rounds = ", ".join(f"{s.rps:,.0f}" for s in result.samples)
        failures = f" ({len(result.failures)} failed)" if result.failures else ""
        lines.append(
            f"| {row.label} | {rps:,.0f} | {ratio(rps, baseline)} | {ratio(rps, haproxy)} "
            f"| {ratio(rps, nginx_cache) if row.cached else '-'} "
            f"| {result.median('p50_ms'):.2f} | {result.median('p99_ms'):.2f} "
            f"| {result.median('cpu_us'):.1f} "
            f"| {result.median('idle_rss_mib'):.1f} | {sum(s.errors for s in result.samples)} "
            f"| {result.median('other_load_pct'):.0f} | {rounds}{failures} |"
        )
    return lines


def times(value: float | None, reference: float | None) -> str:
    """value / reference as "0.42x", or "-" when either is missing."""
    return f"{value / reference:.2f}x" if value is not None and reference else "-"


def cost_table(
    trees: Sequence[Tree],
    results: dict[tuple[str, str], RowResult],
    callgrind: dict[str, CallgrindResult],
) -> list[str]:
    """CPU time (from the 1 KiB wrk rows) and callgrind instructions per request, per path and tree."""
    setting = SETTINGS[0]
    lines = [
        "| path | powerlb | CPU us/req | vs baseline | instructions/req (callgrind) | vs baseline |",
        "|---|---|--:|--:|--:|--:|",
    ]
    for path, label in (
        ("proxied", "powerlb CPython"),
        ("hits", "powerlb CPython (hits)"),
        ("unique", "- (callgrind only)"),
    ):
        cpu: dict[str, float | None] = {}
        instructions: dict[str, float | None] = {}
        for tree in trees:
            result = results.get((setting.title, label + tree.suffix))
            cpu[tree.name] = result.median("cpu_us") if result and result.samples else None
            counted = callgrind.get(tree.name)
            instructions[tree.name] = getattr(counted, path) if counted else None
        if all(value is None for value in (*cpu.values(), *instructions.values())):
            continue  # neither its wrk row nor callgrind ran
        base = trees[-1].name if len(trees) > 1 else None
        for tree in trees:
            mine_cpu, mine_ir = cpu[tree.name], instructions[tree.name]
            lines.append(
                f"| {path} | {tree.name} | {'-' if mine_cpu is None else f'{mine_cpu:.1f}'} "
                f"| {times(mine_cpu, cpu.get(base) if base else None)} "
                f"| {'-' if mine_ir is None else f'{mine_ir:,.0f}'} "
                f"| {times(mine_ir, instructions.get(base) if base else None)} |"
            )
    return lines


def write_chart(
    rows: Sequence[Row],
    settings: Sequence[Setting],
    results: dict[tuple[str, str], RowResult],
    path: Path,
    note: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import StrMethodFormatter

    fig, ax = plt.subplots(figsize=(12, 0.55 * len(rows) * len(settings) + 2))
    height = 0.76 / len(settings)
    colors = ("#4c72b0", "#dd8452")
    for i, setting in enumerate(settings):
        values = [results[setting.title, row.label] for row in rows]
        medians = [r.median("rps") if r.samples else 0.0 for r in values]
        positions = [n + (i - (len(settings) - 1) / 2) * height for n in range(len(rows))]
        bars = ax.barh(positions, medians, height, label=setting.title, color=colors[i])
        for bar, row in zip(bars, rows):
            if row.label == row.baseline_label:  # a baseline row: hatched, paler
                bar.set_hatch("//")
                bar.set_alpha(0.6)
        ax.bar_label(bars, labels=[f"{m:,.0f}" if m else "failed" for m in medians], padding=4, fontsize=9)
    ax.set_yticks(range(len(rows)), [row.label for row in rows], fontsize=10)
    ax.invert_yaxis()
    ax.set_xlabel("requests per second (median of rounds; higher is better)")
    ax.set_title(f"powerlb vs HAProxy, nginx and its baseline on 127.0.0.1 — {note}", fontsize=11)
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


def rerun_lines() -> list[str]:
    """How to rerun the benchmark; written at the top of BENCHMARKS.md."""
    return [
        "```sh",
        "make bench                      # full run, as below",
        "make bench BENCH_ARGS=--quick   # 1 round of 2 s, to try it",
        "# a subset: some rows (" + ", ".join(ROW_KEYS) + "), one setting, report elsewhere",
        'make bench BENCH_ARGS="--rows proxied,hits,callgrind --settings 1k --rounds 1 --output /tmp/b.md"',
        "make bench BENCH_ARGS='--baseline v1.0'   # another baseline commit; --baseline none: no baseline",
        "```",
    ]


def baseline_note(trees: Sequence[Tree], commit: baseline_commit.Baseline | None) -> list[str]:
    if commit is None:
        return ["No baseline in this run (`--baseline none`).", ""]
    return [
        f"Baseline: `{commit.short}` ({commit.subject}). Every powerlb row also ran from that commit "
        f"(rows marked `{trees[-1].suffix.strip()}`, installed into `{commit.home.relative_to(ROOT)}`); "
        "**vs baseline** divides a row's median req/s by that of its baseline twin, measured in the same "
        "interleaved rounds on the same machine.",
        "",
    ]


def write_report(
    report: Path,
    chart: Path,
    run: RunResults,
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
        *rerun_lines(),
        "",
        f"This run: `{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, "
        f"{args.rounds} interleaved round(s) of {args.duration} s per row and setting, "
        f"total runtime {elapsed / 60:.1f} min.",
        "",
        *baseline_note(run.trees, run.baseline),
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {key} | {value} |" for key, value in machine),
        "",
        "wrk, the balancer under test and the backends share these cores.",
        "",
        *load_note(run.results),
        *([f"![req/s per row]({os.path.relpath(chart, report.parent)})", ""] if run.rows else []),
        *(f"Skipped: {row}." for row in run.skipped),
        *([""] if run.skipped else []),
    ]
    for setting in run.settings if run.rows else ():
        lines += [
            f"## {setting.title}",
            "",
            f"`wrk -t1 -c{setting.connections} -d{args.duration}s --latency`, "
            f"body {setting.size // 1024} KiB.",
            "",
            *results_table(run.rows, {row.label: run.results[setting.title, row.label] for row in run.rows}),
            "",
        ]
    costs = cost_table(run.trees, run.results, run.callgrind)
    if costs[2:] or run.callgrind_failures:
        lines += [
            "## Cost per request (powerlb CPython, 1 KiB body)",
            "",
            *costs,
            "",
            *(f"- failed: {failure}" for failure in run.callgrind_failures),
            *([""] if run.callgrind_failures else []),
        ]
    if "memory" in args.rows:
        lines += [
            "## Memory while streaming (powerlb, CPython)",
            "",
            "| powerlb | transfer | idle RSS MiB | max growth MiB (sampled every 0.2 s) "
            "| peak growth MiB (VmHWM) | MiB/s |",
            "|---|---|--:|--:|--:|--:|",
            *(
                f"| {m.tree} | {m.label} | {m.baseline_mib:.1f} | {m.sampled_growth_mib:.1f} "
                f"| {m.peak_growth_mib:.1f} | {m.size / MIB / m.seconds:.0f} |"
                for m in run.memory
            ),
            "",
            *(f"- failed: {failure}" for failure in run.memory_failures),
            *([""] if run.memory_failures else []),
        ]
    lines += [
        "## How the figures are computed",
        "",
        METHOD.format(
            duration=args.duration,
            tick=1000 // CLOCK_TICKS,
            max_body=" ".join(MAX_BODY_OPTION),
            max_growth=MAX_GROWTH_BYTES // MIB,
            transfer_timeout=TRANSFER_TIMEOUT,
            callgrind_warmup=CALLGRIND_WARMUP,
            callgrind_requests=args.callgrind_requests,
            callgrind_requests_twice=2 * args.callgrind_requests,
            default_baseline=DEFAULT_BASELINE,
        ),
    ]
    report.write_text("\n".join(lines) + "\n")


# --- main --------------------------------------------------------------------------------------------------


def comma_list(choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """An argparse type: a comma-separated subset of choices."""

    def parse(text: str) -> tuple[str, ...]:
        chosen = tuple(item.strip() for item in text.split(",") if item.strip())
        unknown = [item for item in chosen if item not in choices]
        if unknown or not chosen:
            raise argparse.ArgumentTypeError(
                f"{', '.join(unknown) or 'nothing'} is not one of {', '.join(choices)}"
            )
        return chosen

    return parse


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 2 s, 100 callgrind requests (overrides --rounds/--duration/--callgrind-requests)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument(
        "--baseline",
        default=DEFAULT_BASELINE,
        metavar="REV",
        help=f"commit every powerlb row is also measured at (default {DEFAULT_BASELINE}); none: no baseline",
    )
    parser.add_argument(
        "--rows",
        type=comma_list(ROW_KEYS),
        default=ROW_KEYS,
        help=f"comma-separated rows and checks to run (default all: {','.join(ROW_KEYS)})",
    )
    settings = [s.body for s in SETTINGS]
    parser.add_argument(
        "--settings",
        type=comma_list(settings),
        default=tuple(settings),
        help=f"comma-separated body sizes to run the wrk rows with (default {','.join(settings)})",
    )
    parser.add_argument(
        "--callgrind-requests",
        type=int,
        default=300,
        metavar="N",
        help="callgrind: requests per path counted (batches of N and 2N, default 300)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=REPORT,
        help="report to write (default BENCHMARKS.md; its chart is bench/chart.png, else REPORT.png)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.callgrind_requests = 1, 2, 100
    if args.rounds < 1 or args.duration < 1 or args.callgrind_requests < 1:
        parser.error("--rounds, --duration and --callgrind-requests must be at least 1")
    return args


def benchmark_rows(selected: Sequence[str], trees: Sequence[Tree]) -> tuple[list[Row], list[str]]:
    """The wrk rows to run, each powerlb row followed by its baseline twin; and those skipped, why."""
    rows = [row for row in REFERENCE_ROWS if row.key in selected]
    skipped = []
    for key, label, interpreter, cached, options in POWERLB_ROWS:
        if key not in selected:
            continue
        twin = label + trees[-1].suffix if len(trees) > 1 else None
        for tree in trees:
            venv = tree.venvs[interpreter]
            if options and not has_option(venv, options[0]):
                skipped.append(f"`{label}{tree.suffix}` (`twistd powerlb --help` lists no `{options[0]}`)")
                continue
            rows.append(Row(label + tree.suffix, key, "powerlb", cached, venv, options, twin))
    if ROUTES_KEY in selected:
        proxied = next(label for key, label, *_ in POWERLB_ROWS if key == "proxied")
        venv = trees[0].venvs["cpython"]
        rows.append(Row(ROUTES_LABEL, ROUTES_KEY, "powerlb", False, venv, baseline_label=proxied))
    return rows, skipped


def byte_compile(venv: Path) -> None:
    """Compile this tree's modules with the venv's interpreter, as pip compiles the baseline's install.

    The editable install runs from the source; under PYTHONDONTWRITEBYTECODE it would compile every
    module at each start, which leaves the compiler's garbage in the idle RSS (about 1.5 MiB)."""
    python = str(venv / "bin" / "python")
    argv = [python, "-m", "compileall", "-q", str(ROOT / "powerlb"), str(ROOT / "twisted")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")


def prepare_trees(
    args: argparse.Namespace, tools: dict[str, str]
) -> tuple[list[Tree], baseline_commit.Baseline | None]:
    """This tree and, unless --baseline none, the baseline commit, with the venvs the selected rows need."""
    pypy = any(key in args.rows for key in ("pypy", "pypy-hits"))
    if pypy:
        ensure_pypy_venv()
    trees = [
        Tree(
            "this tree",
            "",
            {"cpython": CPYTHON_VENV, "pypy": PYPY_VENV} if pypy else {"cpython": CPYTHON_VENV},
        )
    ]
    for venv in trees[0].venvs.values():
        byte_compile(venv)
    if args.baseline == "none":
        return trees, None
    try:
        commit = baseline_commit.resolve(ROOT, args.baseline)
        venvs = {"cpython": baseline_commit.install(ROOT, commit, str(Path(sys.executable).resolve()))}
        if pypy:
            venvs["pypy"] = baseline_commit.install(ROOT, commit, tools["pypy3"])
    except baseline_commit.BaselineError as err:
        raise SystemExit(f"--baseline {args.baseline}: {err}") from err
    trees.append(Tree(f"baseline {commit.short}", f" @{commit.short}", venvs))
    return trees, commit


@dataclass
class RunResults:
    """Everything one run measured, for the report."""

    trees: list[Tree]
    baseline: baseline_commit.Baseline | None
    rows: list[Row]
    settings: list[Setting]
    skipped: list[str]
    results: dict[tuple[str, str], RowResult] = field(default_factory=dict)
    callgrind: dict[str, CallgrindResult] = field(default_factory=dict)
    callgrind_failures: list[str] = field(default_factory=list)
    memory: list[MemoryResult] = field(default_factory=list)
    memory_failures: list[str] = field(default_factory=list)


def run_rounds(ctx: Context, run: RunResults, args: argparse.Namespace) -> None:
    for round_no in range(1, args.rounds + 1):
        for setting in run.settings:
            for row in run.rows:
                result = run.results[setting.title, row.label]
                prefix = f"[round {round_no}/{args.rounds}] {setting.title:<29} {row.label:<36}"
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


def run_callgrind(ctx: Context, run: RunResults, requests: int) -> None:
    for tree in run.trees:
        began = time.monotonic()
        try:
            counted = callgrind_costs(ctx, tree, requests)
        except BenchError as err:
            run.callgrind_failures.append(f"callgrind, {tree.name}: {summary(err)}")
            print(f"callgrind, {tree.name}: FAILED: {err}", flush=True)
            continue
        run.callgrind[tree.name] = counted
        print(
            f"callgrind, {tree.name}: {counted.proxied:,.0f} instructions/request proxied, "
            f"{counted.hits:,.0f} per cache hit ({time.monotonic() - began:.0f} s)",
            flush=True,
        )


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    if platform.python_implementation() != "CPython":
        raise SystemExit("run bench/run.py with the CPython venv (make bench)")
    if importlib.util.find_spec("matplotlib") is None:  # the chart comes last: say so before measuring
        raise SystemExit("matplotlib is missing for the chart; run make bench, or pip install -e '.[bench]'")
    began = time.monotonic()
    tools = ensure_tools()
    trees, commit = prepare_trees(args, tools)
    rows, skipped = benchmark_rows(args.rows, trees)
    settings = [s for s in SETTINGS if s.body in args.settings]
    run = RunResults(trees, commit, rows, settings, skipped)
    run.results = {(s.title, row.label): RowResult() for s in settings for row in rows}
    machine = machine_description(tools, trees)
    measurements = args.rounds * len(settings) * len(rows)
    print(
        f"{measurements} wrk measurements of {args.duration} s (about "
        f"{measurements * (args.duration + WARMUP_SECONDS + 2) / 60:.1f} min), then "
        f"{', '.join(key for key in EXTRA_KEYS if key in args.rows) or 'nothing else'}",
        flush=True,
    )
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
            run_rounds(ctx, run, args)
            if "callgrind" in args.rows:
                run_callgrind(ctx, run, args.callgrind_requests)
            if "memory" in args.rows:
                warm_page_cache(www / "1g")
                for tree in trees:
                    memory, failures = memory_checks(ctx, tree)
                    run.memory += memory
                    run.memory_failures += failures
    elapsed = time.monotonic() - began
    report = args.output.resolve()
    chart = CHART if report == REPORT else report.with_suffix(".png")
    report.parent.mkdir(parents=True, exist_ok=True)
    if rows:
        note = f"wrk -t1, {args.rounds} round(s) x {args.duration} s, {machine[0][1]} cores"
        write_chart(rows, settings, run.results, chart, note)
    write_report(report, chart, run, machine, args, elapsed)
    print(f"wrote {report} and {chart}; total runtime {elapsed:.0f} s ({elapsed / 60:.1f} min)")


if __name__ == "__main__":
    main(sys.argv[1:])
