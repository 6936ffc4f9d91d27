"""Real launchers, real signals: no rank outlives its torchrun, and a stopped rank cannot hold a
run past the collective timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import ENTRY, REPO, TINY_FLUX, _free_port, offline_env


def start_torchrun(args: list[str], tmp_path: Path, nproc: int = 2, **env: str):
    log = tmp_path / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
           "--master_port", str(_free_port()), str(ENTRY), *args]
    out = open(log, "w")
    proc = subprocess.Popen(cmd, cwd=REPO, env=offline_env(tmp_path, **env), stdout=out,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    out.close()
    return proc, log


def wait_for_text(log: Path, text: str, proc, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in log.read_text(errors="replace"):
            return
        assert proc.poll() is None, f"launcher ended early:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{text!r} never appeared:\n{log.read_text()[-3000:]}")


def workers_of(launcher_pid: int) -> dict[int, psutil.Process]:
    """Rank -> worker process, read from the workers' environments."""
    ranks = {}
    for child in psutil.Process(launcher_pid).children(recursive=True):
        try:
            rank = child.environ().get("RANK")
        except psutil.Error:
            continue
        if rank is not None and "benchmark" in " ".join(child.cmdline()):
            ranks[int(rank)] = child
    return ranks


def alive(processes) -> list[psutil.Process]:
    living = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                living.append(p)
        except psutil.NoSuchProcess:
            pass
    return living


def kill_all(processes) -> None:
    for p in alive(processes):
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass


def test_sigkill_of_torchrun_takes_every_rank_with_it(tmp_path):
    base = tmp_path / "out"
    # Each iteration takes a fraction of a second: a rank left alive would finish the run and
    # write results.json well inside the time this test waits.
    args = [*TINY_FLUX, "--workload.base_dir", str(base), "--ulysses_degree", "2",
            "--benchmark_iters", "30", "--no_count_flops"]
    launcher, log = start_torchrun(args, tmp_path)
    workers: dict[int, psutil.Process] = {}
    try:
        wait_for_text(log, "iteration 0:", launcher)
        workers = workers_of(launcher.pid)
        assert sorted(workers) == [0, 1]
        killed_at = time.monotonic()
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        while alive(workers.values()) and time.monotonic() - killed_at < 10:
            time.sleep(0.1)
        assert not alive(workers.values()), "ranks outlived their torchrun by 10 s"
        time.sleep(max(0.0, 20 - (time.monotonic() - killed_at)))
        assert not list(base.rglob("results.json"))
    finally:
        kill_all(workers.values())
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_sigint_to_torchrun_ends_every_rank_without_results(tmp_path, signum):
    base = tmp_path / "out"
    args = [*TINY_FLUX, "--workload.base_dir", str(base), "--ulysses_degree", "2",
            "--benchmark_iters", "30", "--no_count_flops"]
    launcher, log = start_torchrun(args, tmp_path)
    workers: dict[int, psutil.Process] = {}
    try:
        wait_for_text(log, "iteration 0:", launcher)
        workers = workers_of(launcher.pid)
        signalled_at = time.monotonic()
        launcher.send_signal(signum)
        launcher.wait(timeout=30)
        while alive(workers.values()) and time.monotonic() - signalled_at < 10:
            time.sleep(0.1)
        assert not alive(workers.values())
        assert launcher.returncode != 0
        time.sleep(max(0.0, 20 - (time.monotonic() - signalled_at)))
        assert not list(base.rglob("results.json"))
    finally:
        kill_all(workers.values())
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


def test_a_rank_bound_to_its_launcher_dies_with_it(tmp_path):
    """The mechanism alone, with nothing else of the benchmark: a child bound by
    `bind_to_launcher` is gone within a second of its parent's SIGKILL."""
    script = (
        "import os, subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', "
        "'from mlenergy.diffusion.process.lifeline import bind_to_launcher; bind_to_launcher(force=True);"
        " import time; print(\"bound\", flush=True); time.sleep(120)'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    child_pid = int(parent.stdout.readline())
    assert parent.stdout.readline().strip() == "bound"
    child = psutil.Process(child_pid)
    try:
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 5
        while alive([child]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not alive([child])
    finally:
        kill_all([child])


def test_a_stopped_rank_ends_the_run_with_a_line_naming_it(tmp_path):
    base = tmp_path / "out"
    args = [*TINY_FLUX, "--workload.base_dir", str(base), "--ulysses_degree", "2",
            "--benchmark_iters", "500", "--no_count_flops"]
    launcher, log = start_torchrun(args, tmp_path, MLENERGY_COLLECTIVE_TIMEOUT_S="5")
    workers: dict[int, psutil.Process] = {}
    try:
        wait_for_text(log, "iteration 0:", launcher)
        workers = workers_of(launcher.pid)
        workers[1].suspend()  # SIGSTOP: alive, silent
        stopped_at = time.monotonic()
        launcher.wait(timeout=90)
        ended_after = time.monotonic() - stopped_at
        output = log.read_text(errors="replace")
        # Said by the watchdog, or by rank 0 when its collective timed out first.
        errors = [line for line in output.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "rank 1 gave no sign of life for" in errors[0], output[-3000:]
        assert launcher.returncode != 0 and ended_after < 20
        deadline = time.monotonic() + 10
        while alive(workers.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(workers.values())
        assert not list(base.rglob("results.json"))
    finally:
        for p in alive(workers.values()):
            p.resume()
        kill_all(workers.values())
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()


GROUPS_SCRIPT = """
import os, sys, time
import torch, torch.distributed as dist
from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.inputs.config import parse_cli
from mlenergy.diffusion.planning.plan import make_plan
plan = make_plan(parse_cli(["--ulysses_degree", "2", "workload:t2i", "--workload.weights", "tiny",
                            "--workload.height", "128", "--workload.width", "128"]))
ranks = runtime.init_process_group(plan.launch)
from mlenergy.diffusion import benchmark
benchmark._load_pipeline(plan, ranks)  # where xDiT creates its groups, as in a run
from xfuser.core.distributed import get_sp_group, get_world_group
import yunchang.globals
groups = {"xDiT world": get_world_group().device_group, "xDiT sequence": get_sp_group().device_group,
          "xDiT sequence (cpu)": get_sp_group().cpu_group,
          "yunchang Ulysses": yunchang.globals.PROCESS_GROUP.ULYSSES_PG,
          "default": dist.group.WORLD}
done = sys.argv[1]
if ranks.rank == 1:
    # Alive and beating, but never joining: only the groups' timeout can end rank 0's waits.
    deadline = time.monotonic() + 100
    while time.monotonic() < deadline and not os.path.exists(done):
        time.sleep(0.2)
    os._exit(0)
for name, group in groups.items():
    started = time.monotonic()
    try:
        dist.all_reduce(torch.ones(1), group=group)
        print(name, "completed", flush=True)
    except RuntimeError:
        print(name, "timed out after", round(time.monotonic() - started, 1), flush=True)
open(done, "w").close()
os._exit(0)
"""


def test_every_group_xdit_creates_takes_the_collective_timeout(tmp_path):
    script = tmp_path / "groups.py"
    script.write_text(GROUPS_SCRIPT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
           str(_free_port()), str(script), str(tmp_path / "done")]
    proc = subprocess.run(cmd, cwd=REPO, env=offline_env(tmp_path, MLENERGY_COLLECTIVE_TIMEOUT_S="3"),
                          capture_output=True, text=True, timeout=150)
    waits = [line.split() for line in proc.stdout.splitlines() if "timed out after" in line]
    assert len(waits) == 5, proc.stdout + proc.stderr[-3000:]
    assert all(2.5 <= float(w[-1]) < 15 for w in waits), waits
