"""The built artefacts as a user gets them: ``python -m build`` makes the sdist and the wheel,
each is installed with plain ``pip install`` into a fresh venv outside the source tree (its
dependencies resolved from the package index, as for a user, on whichever interpreter runs the
tests: CPython or PyPy), and checked from another working directory."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from email.parser import Parser
from pathlib import Path
from typing import Dict, List, Sequence

import pytest
from packaging.version import Version

import powerlb
from tests.support import REPO, clean_env

pytestmark = [pytest.mark.heavy, pytest.mark.timeout(600)]

#: The modules that must import in a fresh install: the package, its entry points, the test
#: doubles it ships, and the ones that need the default dependencies (h2 for HTTP/2,
#: prometheus_client for /metrics).
MODULES = (
    "powerlb",
    "powerlb.testing",
    "powerlb.tap",
    "powerlb.ctl",
    "powerlb.demo",
    "powerlb.workers",
    "powerlb.http2",
    "powerlb.tls",
    "powerlb.metrics",
    "powerlb.dashboard",
)
#: Seconds one pip install (with dependency resolution) may take.
INSTALL_TIMEOUT = 400
#: Seconds one command of an installed powerlb may take.
RUN_TIMEOUT = 60
KINDS = ("wheel", "sdist")
#: What is run in each venv, from a directory with nothing of powerlb's in it (all at once).
IMPORTS = f"import importlib\nfor m in {MODULES!r}: importlib.import_module(m)\n"
COMMANDS: Dict[str, List[str]] = {
    "plugins": ["twistd", "--help"],
    "version": ["twistd", "powerlb", "--version"],
    "ctl help": ["powerlb-ctl", "--help"],
    "ctl version": ["powerlb-ctl", "--version"],
    "imports": ["python", "-c", IMPORTS + "import powerlb\nprint(powerlb.__file__)"],
}


def run_at_once(commands: Dict[str, Sequence[str]], cwd: Path, timeout: float) -> Dict[str, str]:
    """Run the commands side by side in ``cwd``; their standard output by key, or a failed
    assertion showing all that a failed one printed (their output is kept in ``cwd``/logs)."""
    logs = cwd / "logs"
    logs.mkdir(exist_ok=True)
    running = {}
    for key, args in commands.items():
        with open(logs / f"{key}.out", "wb") as out, open(logs / f"{key}.err", "wb") as err:
            running[key] = subprocess.Popen(list(args), cwd=cwd, env=clean_env(), stdout=out, stderr=err)
    outputs = {}
    for key, process in running.items():
        status = process.wait(timeout)
        out, err = ((logs / f"{key}.{name}").read_text() for name in ("out", "err"))
        assert status == 0, f"{' '.join(commands[key])} exited {status}\n{out}{err}"
        assert "Traceback" not in err, err
        outputs[key] = out
    return outputs


class Installed:
    """A fresh venv that one artefact (the wheel or the sdist) was installed into."""

    def __init__(self, venv: Path) -> None:
        self.bin = venv / "bin"
        #: site-packages (lib/python3.X or lib/pypy3.X)
        (self.site,) = venv.glob("lib/*/site-packages")
        self.dist_info = self.site / f"powerlb-{powerlb.__version__}.dist-info"


def _source_copy(base: Path) -> Path:
    """The working tree without caches and venvs: building writes *.egg-info next to the
    sources, which must not touch the tree the tests run from."""
    source = base / "src"
    shutil.copytree(
        REPO,
        source,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "dropin.cache",
            ".hypothesis", ".pytest_cache", ".ruff_cache", "bench",
        ),
    )  # fmt: skip
    return source


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Installed]:
    """The sdist and the wheel, built and installed each into its own fresh venv (at once)."""
    base = tmp_path_factory.mktemp("packaging")
    dist = base / "dist"
    # The wheel is built from the sdist, as pip does from an sdist. --no-isolation: the test
    # environment's setuptools (a fresh build environment would only cost time).
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(_source_copy(base))]
    run_at_once({"build": build}, base, RUN_TIMEOUT)
    artefacts = {"wheel": list(dist.glob("*.whl")), "sdist": list(dist.glob("*.tar.gz"))}
    installs = {}
    for kind, (artefact,) in artefacts.items():
        venv = base / f"venv-{kind}"
        run_at_once({"venv": [sys.executable, "-m", "venv", "--without-pip", str(venv)]}, base, RUN_TIMEOUT)
        # This pip, run for the new venv's interpreter: no pip of its own to install first.
        # --no-compile saves the time of byte-compiling every dependency (PyPy is slow at it).
        installs[f"pip {kind}"] = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
        installs[f"pip {kind}"] += ["install", "--no-compile", "--disable-pip-version-check", str(artefact)]
    run_at_once(installs, base, INSTALL_TIMEOUT)
    return {kind: Installed(base / f"venv-{kind}") for kind in KINDS}


@pytest.fixture(scope="module")
def ran(installed: Dict[str, Installed], tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    """The output of each of :data:`COMMANDS` in each venv, keyed ``"<kind> <command>"``."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    commands = {
        f"{kind} {name}": [str(installed[kind].bin / args[0]), *args[1:]]
        for kind in KINDS
        for name, args in COMMANDS.items()
    }
    return run_at_once(commands, elsewhere, RUN_TIMEOUT)


@pytest.mark.parametrize("kind", KINDS)
def test_twistd_lists_the_plugin_and_writes_its_cache(
    installed: Dict[str, Installed], ran: Dict[str, str], kind: str
) -> None:
    listing = ran[f"{kind} plugins"]
    assert re.search(r"^\s+powerlb\s+HTTP load balancer", listing, re.M), listing
    cache = installed[kind].site / "twisted" / "plugins" / "dropin.cache"
    assert cache.is_file() and b"powerlb_plugin" in cache.read_bytes()
    assert ran[f"{kind} version"].startswith(f"powerlb {powerlb.__version__} (Twisted ")


@pytest.mark.parametrize("kind", KINDS)
def test_powerlb_ctl_runs(ran: Dict[str, str], kind: str) -> None:
    assert ran[f"{kind} ctl help"].startswith("usage: powerlb-ctl")
    assert ran[f"{kind} ctl version"] == f"powerlb-ctl {powerlb.__version__}\n"


@pytest.mark.parametrize("kind", KINDS)
def test_modules_import_from_the_installed_copy(
    installed: Dict[str, Installed], ran: Dict[str, str], kind: str
) -> None:
    assert Path(ran[f"{kind} imports"].strip()) == installed[kind].site / "powerlb" / "__init__.py"


@pytest.mark.parametrize("kind", KINDS)
def test_every_file_of_the_package_is_installed(installed: Dict[str, Installed], kind: str) -> None:
    venv = installed[kind]
    source = REPO / "powerlb"
    wanted = sorted(
        str(path.relative_to(source))
        for path in source.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )
    assert "py.typed" in wanted and "dashboard.html" in wanted
    missing = [name for name in wanted if not (venv.site / "powerlb" / name).is_file()]
    assert missing == []
    # The plugin goes into Twisted's plugin directory, with no __init__.py that would shadow Twisted's.
    record = (venv.dist_info / "RECORD").read_text()
    recorded = {line.split(",")[0] for line in record.splitlines()}
    assert "twisted/plugins/powerlb_plugin.py" in recorded
    assert not recorded & {"twisted/__init__.py", "twisted/plugins/__init__.py"}


@pytest.mark.parametrize("kind", KINDS)
def test_metadata_is_complete(installed: Dict[str, Installed], kind: str) -> None:
    metadata = Parser().parsestr((installed[kind].dist_info / "METADATA").read_text(encoding="utf-8"))
    assert metadata["Name"] == "powerlb" and metadata["Version"] == powerlb.__version__
    assert metadata["Summary"] and metadata["License-Expression"] == "MIT"
    assert (installed[kind].dist_info / "licenses" / "LICENSE").is_file()
    assert metadata["Description-Content-Type"] == "text/markdown"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert metadata.get_payload().strip() == readme.strip()
    classifiers = metadata.get_all("Classifier")
    for classifier in (
        "Framework :: Twisted",
        "Programming Language :: Python :: Implementation :: CPython",
        "Programming Language :: Python :: Implementation :: PyPy",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.11",
        "Typing :: Typed",
    ):
        assert classifier in classifiers
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert {"Documentation", "Source", "Issues"} <= set(urls)
    requires = metadata.get_all("Requires-Dist")
    assert "twisted[http2,tls]>=22.10" in requires  # HTTP/2 and TLS in every install


def test_the_version_has_one_home() -> None:
    """setup.py reads powerlb/_version.py; nothing else spells the version out."""
    assert str(Version(powerlb.__version__)) == powerlb.__version__  # valid and normalised (PEP 440)
    for name in ("setup.py", "pyproject.toml"):
        assert powerlb.__version__ not in (REPO / name).read_text(encoding="utf-8"), name
