"""Zeus's pollers end with the rank that started them, however the rank ends.

A failed rank ends with os._exit and a killed one by SIGKILL; neither runs the stop that ends
Zeus's spawned pollers, which then ran on for ever, holding the rank's output pipe open (a run
piped into `tee` never finished: an H100, 2026-12-05). The worker starts a poller as
`probes.gpus` starts Zeus's and ends abruptly; reading its output to the end must finish, and the
poller must be gone."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO

WORKER = Path(__file__).parent / "workers" / "rank_with_poller.py"


def _running(pid: int) -> bool:
    """Alive and not a zombie (an ended orphan waits for PID 1 to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _start(tmp_path: Path, ending: str, bound: bool) -> tuple[subprocess.Popen, Path]:
    pidfile = tmp_path / "poller.pid"
    rank = subprocess.Popen([sys.executable, str(WORKER), ending, "1" if bound else "0",
                             str(pidfile)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    return rank, pidfile


@pytest.mark.parametrize("ending,status", [("exit", 1), ("kill", -9)])
def test_a_rank_that_ends_abruptly_takes_its_pollers_and_its_pipe_with_it(tmp_path, ending,
                                                                          status):
    rank, pidfile = _start(tmp_path, ending, bound=True)
    # communicate() returns at the pipe's end: when the poller, which inherited it, is gone too.
    output, _ = rank.communicate(timeout=60)
    assert "poller started" in output
    assert rank.returncode == status, output
    poller = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while _running(poller) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(poller)


def test_a_poller_started_plainly_outlives_its_rank(tmp_path):
    """The failure the binding removes, shown on the same worker: the check above can fail."""
    rank, pidfile = _start(tmp_path, "exit", bound=False)
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            rank.communicate(timeout=8)
        assert rank.poll() == 1  # the rank itself is gone; its poller holds the pipe
        assert _running(int(pidfile.read_text()))
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)
        rank.communicate(timeout=30)
