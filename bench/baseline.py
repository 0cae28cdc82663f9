"""The baseline powerlb for bench/run.py: one commit, exported and installed into venvs of its own.

    .bench/baseline-<commit>/src               `git archive` of the commit
    .bench/baseline-<commit>/venv-python3.11   CPython venv with powerlb installed from src (not editable)
    .bench/baseline-<commit>/venv-pypy3        the same for PyPy (when PyPy rows run)

Each directory is built once per commit (a `.complete` / `.installed` stamp marks it finished), so
reruns start at once; `rm -rf .bench` rebuilds them.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

INSTALL_TIMEOUT = 1800  # seconds; PyPy may build wheels the first time


class BaselineError(Exception):
    """The baseline commit could not be found, exported or installed."""


@dataclass(frozen=True)
class Baseline:
    """A resolved baseline commit and where its export and venvs live."""

    commit: str  # full hash
    short: str  # abbreviated hash, as shown in row labels
    subject: str
    home: Path

    @property
    def source(self) -> Path:
        return self.home / "src"

    def venv(self, python: str) -> Path:
        return self.home / f"venv-{Path(python).name}"


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BaselineError(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(root: Path, rev: str) -> Baseline:
    """The commit REV names in the repository at root (any form git accepts: hash, tag, branch)."""
    try:
        commit = git(root, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except BaselineError as err:
        raise BaselineError(
            f"no commit {rev!r} in {root} (give a hash, tag or branch; none: no baseline)"
        ) from err
    short, subject = git(root, "log", "-1", "--format=%h%x00%s", commit).split("\0", 1)
    return Baseline(commit, short, subject, root / ".bench" / f"baseline-{commit[:12]}")


def export(root: Path, baseline: Baseline) -> Path:
    """The commit's files under baseline.source, extracted once."""
    stamp = baseline.source / ".complete"
    if stamp.exists():
        return baseline.source
    shutil.rmtree(baseline.source, ignore_errors=True)
    baseline.source.mkdir(parents=True)
    archive = baseline.home / "src.tar"
    git(root, "archive", "--format=tar", "-o", str(archive), baseline.commit)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(baseline.source)], check=True, timeout=120)
    archive.unlink()
    stamp.touch()
    return baseline.source


def install(root: Path, baseline: Baseline, python: str) -> Path:
    """A venv of the given interpreter with the baseline powerlb installed (not editable); built once."""
    venv = baseline.venv(python)
    stamp = venv / ".installed"
    if stamp.exists():
        return venv
    source = export(root, baseline)
    shutil.rmtree(venv, ignore_errors=True)
    print(f"baseline {baseline.short}: installing into {venv.relative_to(root)}", flush=True)
    steps = [
        [python, "-m", "venv", str(venv)],
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--upgrade",
            "pip",
            "setuptools",
            "wheel",
        ],
        # As the Makefile does: cryptography has PyPy wheels only up to some release, never build it.
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--only-binary",
            "cryptography",
            str(source),
        ],
    ]
    for argv in steps:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, cwd=baseline.home
        )
        if done.returncode != 0:
            raise BaselineError(f"{' '.join(argv)} failed:\n{(done.stdout + done.stderr).strip()[-2000:]}")
    stamp.touch()
    return venv
