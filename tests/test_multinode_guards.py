"""Two "nodes" on one machine (two torchrun launchers at one loopback rendezvous, one scripted
GPU each, as in test_two_nodes.py), each node answering for its own GPUs, and the run combining
their answers:

- node 1's reading of one iteration's window lacks its GPU (the other windows are whole): that
  iteration's energy is unmeasured, so the run's energy is not reported at all (never node 0's
  GPU alone as if it were the run's), while the whole windows keep both nodes' GPUs;
- node 1 has a foreign process on its GPU and node 0 none: the run is not exclusive, and the
  foreign process is named under node 1's GPU's global key.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, TINY_FLUX, _free_port, load_results, offline_env, only_run_dir, \
    with_flags, write_gpu_script

WORKER = REPO / "tests" / "workers" / "benchmark_on_faulty_gpus.py"
NODE_POWER_W = (300.0, 500.0)
FOREIGN_PID = 999_999_999  # above any pid_max: never one of the run's ranks


@pytest.fixture(scope="module")
def faulty_second_node(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("faulty-second-node")
    args = with_flags(["--ulysses_degree", "2", *TINY_FLUX, "--workload.base_dir",
                       str(tmp / "out")], "--workload.height", "64", "--workload.width", "64",
                      "--workload.batch_size", "1", "--benchmark_iters", "3",
                      "--no_save_images", "--no_count_flops", "--idle_baseline_s", "0")
    endpoint = f"127.0.0.1:{_free_port()}"
    launchers = []
    for node, watts in enumerate(NODE_POWER_W):
        fault = {"foreign_pids": [FOREIGN_PID]} if node == 1 else {}
        script = write_gpu_script(tmp / f"node{node}.json", power_w=watts, **fault)
        env = offline_env(tmp, MLENERGY_FAKE_GPUS=str(script),
                          **({"GUARDS_DROP_GPU": "iteration-1:0"} if node == 1 else {}))
        launchers.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc_per_node", "1", "--node_rank", str(node), "--rdzv_endpoint", endpoint,
             str(WORKER), *args],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=400)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return load_results(only_run_dir(Path(tmp / "out"))), logs


def test_a_window_without_one_nodes_gpu_leaves_the_runs_energy_unmeasured(faulty_second_node):
    doc, _ = faulty_second_node
    assert doc["num_gpus"] == 2 and doc["num_iterations"] == 3
    whole, broken = doc["iterations"][0], doc["iterations"][1]
    assert broken["gpu_energy"] is None and broken["energy"] is None
    for window in (whole, doc["iterations"][2], doc["energy_measurement"]):
        energy = window["gpu_energy"]
        assert list(energy) == ["0", "1"], window
        # Each node's GPU at its own power over its node's window; the merged window is the
        # longer of the two.
        seconds = [energy[gpu] / watts for gpu, watts in zip("01", NODE_POWER_W)]
        assert max(seconds) == pytest.approx(window["time"], rel=1e-4)
        assert min(seconds) > 0.5 * window["time"]
    # No headline energy from two of three iterations, nor from one node's GPU.
    assert doc["energy_measured"] is False
    assert doc["total_energy"] is None and doc["energy_per_image"] is None
    assert "iteration_energy_measurements" not in doc
    assert doc["average_power_watts"] is None


def test_the_run_is_exclusive_only_when_every_node_says_so(faulty_second_node):
    doc, _ = faulty_second_node
    exclusivity = doc["gpu_exclusivity"]
    assert exclusivity["exclusive"] is False
    assert exclusivity["foreign_pids"] == {"1": [FOREIGN_PID]}
    assert exclusivity["pid_namespace_matches"] is True
