"""The tests stay sorted by kind, with their helpers in one place (issue 14).

``tests/unit``: pure code; ``tests/inproc``: a MemoryReactor or task.Clock, or sockets within
the test process; ``tests/process``: server subprocesses (twistd, backends). Shared helpers
live in ``tests/support``; no test module imports another.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Set

import pytest

from tests.support import REPO

TESTS = REPO / "tests"
KINDS = ("unit", "inproc", "process")
#: The helpers that start server subprocesses, and the fixtures that do.
SERVER_PROCESSES = {
    "Process", "RedisServer", "start_server", "start_demo_backends", "start_twistd", "start_twistd_powerlb",
    "twistd",
}  # fmt: skip
SERVER_FIXTURES = {"demo_backends", "redis_server"}


def modules() -> List[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def imported_modules(path: Path) -> Set[str]:
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def server_starters(path: Path) -> Set[str]:
    """The server-starting helpers ``path`` imports from tests.support and the fixtures it asks for."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tests.support"):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.update(arg.arg for arg in node.args.args)
    return found & (SERVER_PROCESSES | SERVER_FIXTURES)


def test_every_test_module_is_in_a_kind_directory() -> None:
    misplaced = [str(path.relative_to(TESTS)) for path in modules() if path.parent.parent != TESTS]
    misplaced += [str(path.relative_to(TESTS)) for path in modules() if path.parent.name not in KINDS]
    assert misplaced == [], f"put them in one of tests/{{{','.join(KINDS)}}}"


@pytest.mark.parametrize("path", modules(), ids=lambda path: str(path.relative_to(TESTS)))
def test_imports_only_helpers_from_tests(path: Path) -> None:
    from_tests = {name for name in imported_modules(path) if name.split(".")[0] == "tests"}
    others = {name for name in from_tests if name.split(".")[:2] != ["tests", "support"]}
    assert others == set(), "move what they share into tests/support"


@pytest.mark.parametrize(
    "path",
    [path for path in modules() if path.parent.name != "process"],
    ids=lambda path: str(path.relative_to(TESTS)),
)
def test_only_process_tests_start_servers_in_subprocesses(path: Path) -> None:
    assert server_starters(path) == set(), "a test that starts server processes belongs in tests/process"
