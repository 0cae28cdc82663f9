"""bench/run.py without running a benchmark: the baseline pairing, its ratios, the options, the export."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from powerlb.config import build_config
from powerlb.routing import RouteTable
from tests.support import REPO


@pytest.fixture(scope="module")
def bench() -> Iterator[Any]:
    """bench/run.py as a module (it imports bench/baseline.py as `baseline`)."""
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import run

        yield run
    finally:
        sys.path.remove(str(REPO / "bench"))


def git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, check=True).stdout


def sample(bench: Any, rps: float, cpu_us: float = 100.0) -> Any:
    return bench.Sample(rps, int(rps), 0, 1.0, 2.0, cpu_us, 50.0, 0.0)


def trees(bench: Any) -> list[Any]:
    return [
        bench.Tree("this tree", "", {"cpython": Path("/venv")}),
        bench.Tree("baseline abc1234", " @abc1234", {"cpython": Path("/base")}),
    ]


def test_each_powerlb_row_is_followed_by_its_baseline_twin(bench: Any) -> None:
    rows, skipped = bench.benchmark_rows(("haproxy", "proxied", "hits"), trees(bench))
    assert [(row.label, row.venv, row.baseline_label) for row in rows] == [
        ("HAProxy", None, None),
        ("powerlb CPython", Path("/venv"), "powerlb CPython @abc1234"),
        ("powerlb CPython @abc1234", Path("/base"), "powerlb CPython @abc1234"),
        ("powerlb CPython (hits)", Path("/venv"), "powerlb CPython (hits) @abc1234"),
        ("powerlb CPython (hits) @abc1234", Path("/base"), "powerlb CPython (hits) @abc1234"),
    ]
    assert skipped == []


def test_vs_baseline_divides_by_the_twin_measured_in_the_same_run(bench: Any) -> None:
    rows, _ = bench.benchmark_rows(("proxied",), trees(bench))
    results = {
        "powerlb CPython": bench.RowResult([sample(bench, 250), sample(bench, 300), sample(bench, 200)]),
        "powerlb CPython @abc1234": bench.RowResult([sample(bench, 100)]),
    }
    table = bench.results_table(rows, results)
    assert table[0].split(" | ")[2] == "vs baseline"
    assert table[2].startswith("| powerlb CPython | 250 | 2.50x | - |")
    assert table[3].startswith("| powerlb CPython @abc1234 | 100 | 1.00x | - |")


def test_cost_table_compares_cpu_and_instructions_with_the_baseline(bench: Any) -> None:
    title = bench.SETTINGS[0].title
    results = {
        (title, "powerlb CPython"): bench.RowResult([sample(bench, 100, cpu_us=60.0)]),
        (title, "powerlb CPython @abc1234"): bench.RowResult([sample(bench, 100, cpu_us=120.0)]),
    }
    callgrind = {
        "this tree": bench.CallgrindResult("this tree", 400_000, 90_000, 420_000),
        "baseline abc1234": bench.CallgrindResult("baseline abc1234", 1_000_000, 100_000, 1_200_000),
    }
    assert bench.cost_table(trees(bench), results, callgrind)[2:] == [
        "| proxied | this tree | 60.0 | 0.50x | 400,000 | 0.40x |",
        "| proxied | baseline abc1234 | 120.0 | 1.00x | 1,000,000 | 1.00x |",
        "| hits | this tree | - | - | 90,000 | 0.90x |",
        "| hits | baseline abc1234 | - | - | 100,000 | 1.00x |",
        "| unique | this tree | - | - | 420,000 | 0.35x |",
        "| unique | baseline abc1234 | - | - | 1,200,000 | 1.00x |",
    ]


@pytest.mark.parametrize(
    ("argv", "rows", "settings"),
    [
        ([], None, ("1k", "32k")),
        (["--rows", "proxied, hits", "--settings", "1k"], ("proxied", "hits"), ("1k",)),
    ],
)
def test_rows_and_settings_select_a_subset(
    bench: Any, argv: list[str], rows: tuple[str, ...] | None, settings: tuple[str, ...]
) -> None:
    args = bench.parse_args(argv)
    assert args.rows == (rows or bench.ROW_KEYS)
    assert args.settings == settings
    assert args.baseline == bench.DEFAULT_BASELINE


@pytest.mark.parametrize("argv", [["--rows", "proxied,bogus"], ["--rows", ","], ["--settings", "2k"]])
def test_unknown_rows_or_settings_are_refused(
    bench: Any, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        bench.parse_args(argv)
    assert "is not one of" in capsys.readouterr().err


def test_the_baseline_commit_is_resolved_and_exported(bench: Any, tmp_path: Path) -> None:
    baseline = bench.baseline_commit
    head = git("rev-parse", "HEAD").decode().strip()
    commit = baseline.resolve(REPO, "HEAD")
    assert commit.commit == head
    assert commit.home == REPO / ".bench" / f"baseline-{head[:12]}"
    source = baseline.export(REPO, baseline.Baseline(commit.commit, commit.short, commit.subject, tmp_path))
    assert (source / "setup.py").read_bytes() == git("show", "HEAD:setup.py")
    assert (source / ".complete").exists()
    with pytest.raises(baseline.BaselineError, match="no commit 'no-such-revision-anywhere'"):
        baseline.resolve(REPO, "no-such-revision-anywhere")


def test_the_routes_row_compares_50_routes_with_the_proxied_row(bench: Any, tmp_path: Path) -> None:
    rows, _ = bench.benchmark_rows(("proxied", "routes"), trees(bench))
    assert [(row.label, row.venv, row.baseline_label) for row in rows][-1] == (
        "powerlb CPython, 50 routes (last matches)",
        Path("/venv"),
        "powerlb CPython",
    )
    config = build_config({"backend": ["http://127.0.0.1:9001"]}, str(bench.routes_config(tmp_path)))
    assert len(config.routes) == bench.ROUTE_COUNT
    assert [route.index for route in config.routes if route.matches_everything] == [bench.ROUTE_COUNT - 1]
    table = RouteTable(config.routes)
    request = (b"GET", b"127.0.0.1:8080", b"/nocache/1k", [(b"host", b"127.0.0.1:8080")])
    assert table.match(*request) is config.routes[-1]
