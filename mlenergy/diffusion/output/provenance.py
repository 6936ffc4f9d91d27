"""What produced a run: the benchmark's version, its git commit, and the exact command line."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mlenergy.diffusion import __version__
from mlenergy.diffusion.process.launch import launched_by_torchrun
from mlenergy.diffusion.results.sections import Section

# The checkout that holds this package: mlenergy/diffusion/output/provenance.py -> repository root.
_ROOT = Path(__file__).resolve().parents[3]


@dataclass
class Provenance(Section):
    """results.json `provenance`. `git_commit` and `git_dirty` are None when the package is not
    a git checkout (an installed wheel) or git is missing."""

    benchmark_version: str
    git_commit: str | None
    git_dirty: bool | None
    command_line: str


def describe() -> Provenance:
    commit = git_commit()
    return Provenance(benchmark_version=__version__, git_commit=commit,
                      git_dirty=_git_dirty() if commit else None, command_line=command_line())


def version_text() -> str:
    """One line for `--version`: version, and the commit where there is one."""
    commit = git_commit()
    if commit is None:
        return f"mlenergy-diffusion {__version__}"
    dirty = ", with uncommitted changes" if _git_dirty() else ""
    return f"mlenergy-diffusion {__version__} (git {commit[:12]}{dirty})"


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", "-C", str(_ROOT), *args], capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_commit() -> str | None:
    """HEAD of the checkout this package runs from; None where the package is not the top of a
    git work tree (installed into site-packages, possibly inside some other repository)."""
    top = _git("rev-parse", "--show-toplevel")
    if top is None or Path(top).resolve() != _ROOT:
        return None
    return _git("rev-parse", "HEAD") or None


def _git_dirty() -> bool | None:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else status != ""


def command_line() -> str:
    """The command as typed, ready to paste: under torchrun the launcher's own command line
    (which holds the benchmark's arguments), else this interpreter's (`python -m ...`, a script
    path, or the `mlenergy-diffusion` console script)."""
    argv = _launcher_argv() if launched_by_torchrun() else None
    return shlex.join(argv or sys.orig_argv)


def _launcher_argv() -> list[str] | None:
    """The parent process's argv (Linux /proc), which is torchrun's for its workers."""
    try:
        raw = Path(f"/proc/{os.getppid()}/cmdline").read_bytes()
    except OSError:
        return None
    argv = [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    return argv or None
