"""powerlb's modules import each other without a cycle, function-level imports included.

The graph is read from the source with :mod:`ast`: every ``import`` and
``from ... import`` of a powerlb module counts, wherever it stands, except
those under ``if TYPE_CHECKING:`` (never run).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

from tests.support import REPO, clean_env

PACKAGE = REPO / "powerlb"


def module_name(path: Path) -> str:
    """``powerlb/x.py`` -> ``powerlb.x``; ``powerlb/__init__.py`` -> ``powerlb``."""
    return "powerlb" if path.stem == "__init__" else f"powerlb.{path.stem}"


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _import_nodes(node: ast.AST) -> Iterator[ast.AST]:
    """Every Import/ImportFrom under ``node``, at any depth, skipping ``if TYPE_CHECKING:`` bodies."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield from _import_nodes(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _import_nodes(child)


def imports_of(source: str, module: str, modules: Set[str]) -> Set[str]:
    """The modules of ``modules`` that ``module`` (whose code is ``source``) imports."""
    package = module if module == "powerlb" else module.rpartition(".")[0]
    found: Set[str] = set()
    for node in _import_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
            continue
        assert isinstance(node, ast.ImportFrom)
        base = node.module or ""
        if node.level:
            parts = package.split(".")
            base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
        # A name that is a submodule (``from powerlb import cachepolicy``) imports it, any other the package.
        found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return (found & modules) - {module}


def import_graph(package: Path = PACKAGE) -> Dict[str, Set[str]]:
    """Each module of ``package`` and the modules of it that it imports."""
    paths = {module_name(path): path for path in sorted(package.glob("*.py"))}
    modules = set(paths)
    return {name: imports_of(path.read_text(encoding="utf-8"), name, modules) for name, path in paths.items()}


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle of ``graph`` as ``[a, b, ..., a]``, or None when there is none."""
    done: Set[str] = set()
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle is not None:
            return cycle
    return None


MODULES = {"powerlb", "powerlb.a", "powerlb.b"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import powerlb.b", {"powerlb.b"}),
        ("from powerlb.b import thing", {"powerlb.b"}),
        ("from powerlb import b", {"powerlb.b"}),
        ("from powerlb import b, makeService", {"powerlb", "powerlb.b"}),
        ("from powerlb import makeService", {"powerlb"}),
        ("from . import b", {"powerlb.b"}),
        ("from .b import thing", {"powerlb.b"}),
        ("import os\nfrom twisted.internet import reactor", set()),
        ("def f():\n    from powerlb.b import thing", {"powerlb.b"}),
        ("class C:\n    def f(self):\n        if x:\n            import powerlb.b", {"powerlb.b"}),
        ("if TYPE_CHECKING:\n    from powerlb.b import B", set()),
        ("if typing.TYPE_CHECKING:\n    from powerlb.b import B", set()),
        ("if TYPE_CHECKING:\n    pass\nelse:\n    from powerlb.b import B", {"powerlb.b"}),
        ("from powerlb.a import itself", set()),
    ],
)
def test_imports_of(source: str, expected: Set[str]) -> None:
    assert imports_of(source, "powerlb.a", MODULES) == expected


@pytest.mark.parametrize(
    ("graph", "expected"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b", "c"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"b"}}, ["b", "c", "b"]),
        ({"x": {"a"}, "a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_find_cycle(graph: Dict[str, Set[str]], expected: Optional[List[str]]) -> None:
    assert find_cycle(graph) == expected


def test_the_graph_sees_every_module_and_lazy_imports() -> None:
    graph = import_graph()
    assert set(graph) == {module_name(path) for path in PACKAGE.glob("*.py")}
    assert "powerlb.config" in graph["powerlb"]
    # makeService imports the service modules inside the function (import-light ``twistd powerlb --help``).
    assert {"powerlb.service", "powerlb.workers"} <= graph["powerlb"]


def test_powerlb_has_no_import_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def printed_by(code: str) -> str:
    """What ``code`` prints, run by this interpreter in a fresh process from the repository."""
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_the_twistd_plugin_stays_import_light() -> None:
    """``twistd powerlb --help`` loads powerlb.tap: the service modules and the reactor stay out."""
    heavy = (
        "powerlb.service",
        "powerlb.workers",
        "powerlb.admin",
        "twisted.internet.reactor",
        "twisted.web.server",
    )
    code = f"import sys, powerlb.tap; print([m for m in {heavy!r} if m in sys.modules])"
    assert printed_by(code) == "[]"


def test_a_default_service_leaves_out_what_it_does_not_use() -> None:
    """An idle ``twistd powerlb``'s memory (powerlb.tap loaded first): no HTTP/2 without a TLS
    listener (twisted.web.http would import it whenever h2 is installed), no YAML without
    --config, no route parsing without pools or routes, no runtime-change module without the API."""
    unused = (
        "h2",
        "hpack",
        "twisted.web._http2",
        "yaml",
        "powerlb.routeconfig",
        "powerlb.control",
        "powerlb.admin",
    )
    code = (
        "import sys, powerlb.tap, powerlb\n"
        "powerlb.makeService({'listen': 'tcp:0', 'backends': ['http://127.0.0.1:9']})\n"
        f"print([m for m in {unused!r} if m in sys.modules])"
    )
    assert printed_by(code) == "[]"


def test_an_embedding_application_keeps_twisted_webs_http2() -> None:
    """Only twistd's powerlb process leaves Twisted's HTTP/2 out: ``import powerlb`` changes nothing."""
    code = "import powerlb, twisted.web.http; print(twisted.web.http.H2_ENABLED)"
    assert printed_by(code) == "True"


def test_http2_still_loads_after_twisted_web_left_it_out() -> None:
    code = "import powerlb.tap, twisted.web.http, powerlb.http2; print(powerlb.http2.H2Connection.__name__)"
    assert printed_by(code) == "H2Connection"
