"""A rank lets go of every process group before its interpreter exits.

A gloo group still alive at exit keeps worker threads that may be releasing a finished
collective's tensors; cut off there, the rank aborts after a run that had finished (seen in CI:
"terminate called without an active exception", exit -6). The real xDiT groups over gloo, on two
processes: shutdown leaves no gloo worker thread, and says so when something still holds a group.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, _free_port, offline_env, run_benchmark


def _run(tmp_path, hold: bool) -> list[dict]:
    report = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
         str(_free_port()), str(REPO / "tests" / "workers" / "process_group_release.py")],
        cwd=REPO, env=offline_env(tmp_path, REPORT=str(report), HOLD_GROUP="1" if hold else "0"),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"report.{rank}").read_text()) for rank in range(2)]


def test_shutdown_lets_go_of_every_gloo_group_on_every_rank(tmp_path):
    for rank, report in enumerate(_run(tmp_path, hold=False)):
        assert report["gathered"] == [0.0, 1.0]
        # The default group, xDiT's coordinators (a device and a cpu group each), Ulysses' and
        # ring's groups and the DiT group: many threads, none left.
        assert report["threads_before"] >= 10, report
        assert report["threads_after"] == 0, (rank, report)
        assert report["warnings"] == [], (rank, report)


def test_shutdown_says_when_something_still_holds_a_group(tmp_path):
    for rank, report in enumerate(_run(tmp_path, hold=True)):
        assert report["held"]
        # One gloo group (two worker threads) outlives shutdown, and the log says so.
        assert report["threads_after"] == 2, (rank, report)
        assert len(report["warnings"]) == 1
        assert "2 gloo worker threads outlive the process groups" in report["warnings"][0]


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_benchmark_run_leaves_no_group_behind(tmp_path, tiny_flux_args, nproc):
    args = tiny_flux_args(tmp_path / "runs", *(["--ulysses_degree", "2"] if nproc == 2 else []))
    proc = run_benchmark(args, tmp_path, nproc=nproc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "gloo worker threads outlive" not in proc.stdout + proc.stderr
