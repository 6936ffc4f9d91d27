"""Timeouts that really time out, on runs that really hang: a rank that stops answering
(MLENERGY_HANG_RANK, testing.py) stays alive and silent, as a stuck rank does."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ENTRY, REPO, TINY_FLUX, _free_port, offline_env

FLUX = "black-forest-labs/FLUX.1-dev"
TINY_POINT = ["--workload.weights", "tiny", "--workload.height", "128", "--workload.width", "128",
              "--workload.inference_steps", "2", "--warmup_iters", "0", "--benchmark_iters", "1",
              "--no_save_images"]
HANG_LINE = re.compile(r"hang injected on rank (\d+) .* at (\d+\.\d+)")


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line holds `text` (a directory only the test's runs name;
    it lies under pytest's temporary directory, so no filtering on "pytest" here)."""
    ps = subprocess.run(["ps", "-ww", "-eo", "pid,stat,args"], capture_output=True,
                        text=True).stdout
    found = []
    for line in ps.splitlines()[1:]:
        pid, stat, args = line.split(None, 2)
        if text in args and int(pid) != os.getpid() and not stat.startswith("Z"):
            found.append((int(pid), args))
    return found


class Started:
    """A command in a session of its own, its output in a file; whatever of it is left when the
    test ends is killed, by process group and by the processes that name `marker` (torchrun
    starts each worker in a session of its own)."""

    def __init__(self, cmd: list[str], log: Path, marker: str, **env: str):
        self.log, self.marker = log, marker
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=offline_env(log.parent, **env),
                                     stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def output(self) -> str:
        return self.log.read_text()

    def wait_until(self, deadline: float) -> bool:
        """True when the command ended before the wall-clock deadline."""
        while time.time() < deadline:
            if self.proc.poll() is not None:
                return True
            time.sleep(0.2)
        return self.proc.poll() is not None

    def clean_up(self) -> list[tuple[int, str]]:
        """Kill what is left; returns the leftovers found (none when all went as it should)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        left = processes_mentioning(self.marker)
        for pid, _ in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._out.close()
        return left


def test_a_sweep_point_that_never_finishes_is_killed_with_its_whole_process_tree(tmp_path):
    out = tmp_path / "hanging-sweep"
    timeout_s = 15
    # Rank 1 never makes its first measured call; the collective timeout is the default half
    # hour, so nothing but the sweep can end this point.
    sweep = Started([sys.executable, "-m", "mlenergy.diffusion.sweep", "--models", FLUX,
                     "--batch_sizes", "1", "--parallel", "2x1", "--out_dir", str(out),
                     "--timeout_s", str(timeout_s), "--", *TINY_POINT],
                    tmp_path / "sweep.txt", marker=str(out), MLENERGY_HANG_RANK="1")
    started = time.time()
    try:
        # Validation and start-up, the point's timeout, then SIGTERM and at most 15 s of grace.
        ended = sweep.wait_until(started + 120 + timeout_s + 15)
    finally:
        leftovers = sweep.clean_up()
    assert ended, f"the sweep was still waiting for its point:\n{sweep.output()[-3000:]}"
    assert leftovers == [], leftovers
    assert sweep.proc.returncode == 1, sweep.output()[-3000:]
    summary = json.loads((out / "sweep_summary.json").read_text())
    point, = summary["points"]
    assert point["status"] == "failed" and point["nproc"] == 2
    assert point["reason"] == f"timed out after {timeout_s} s; killed"
    assert timeout_s <= point["seconds"] < timeout_s + 20
    assert not (Path(point["run_dir"]) / "results.json").exists()


def blocked_run(tmp_path: Path, hang: str, collective_timeout_s: int) -> tuple[Started, float]:
    """Two processes under Ulysses 2 whose rank 1 stops answering at its first measured call;
    returns the run and when the rank stopped."""
    base = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(_free_port()), str(ENTRY), "--ulysses_degree", "2", *TINY_FLUX,
           "--workload.base_dir", str(base), "--warmup_iters", "0", "--benchmark_iters", "1",
           "--no_save_images", "--idle_baseline_s", "0"]
    run = Started(cmd, tmp_path / "run.txt", marker=str(base), MLENERGY_HANG_RANK=hang,
                  MLENERGY_COLLECTIVE_TIMEOUT_S=str(collective_timeout_s))
    deadline = time.time() + 240
    while time.time() < deadline and run.proc.poll() is None:
        found = HANG_LINE.search(run.output())
        if found:
            return run, float(found.group(2))
        time.sleep(0.2)
    run.clean_up()
    raise AssertionError(f"rank 1 never reached its hang:\n{run.output()[-3000:]}")


def check_ends_within_the_collective_timeout(tmp_path: Path, hang: str) -> None:
    collective_timeout_s = 10
    run, hung_at = blocked_run(tmp_path, hang, collective_timeout_s)
    try:
        ended = run.wait_until(hung_at + collective_timeout_s + 45)
        ended_at = time.time()
    finally:
        leftovers = run.clean_up()
    assert ended, (f"the run was still waiting {collective_timeout_s + 45} s after rank 1 went "
                   f"silent:\n{run.output()[-3000:]}")
    assert leftovers == [], leftovers
    assert run.proc.returncode != 0
    # It waited out the timeout (nothing else ended it), then failed on rank 0, saying why.
    assert ended_at - hung_at >= collective_timeout_s - 0.5
    assert "error: rank 0 failed" in run.output(), run.output()[-3000:]
    assert not list((tmp_path / "out").rglob("results.json"))


def test_a_rank_that_stops_before_a_window_closes_ends_the_run_within_the_collective_timeout(
        tmp_path):
    # Rank 1 returns from its pipeline call, then never reaches the window's closing fence.
    check_ends_within_the_collective_timeout(tmp_path, "1:after_call")
