"""Two "nodes" on one machine: two torchrun launchers meeting at one rendezvous endpoint on the
loopback address, one process each, give the results of one launcher with two processes.

Each node has one scripted GPU (probes/fake.py) with a script of its own: node 0 draws 300 W,
node 1 500 W, and both power timelines read 10% high. So each GPU's energy shows under its global
key whichever node measured it, the nodes' windows merge into one, and the timeline self-check
must fail upwards (the one-node run's timeline reads low).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import (ENTRY, REPO, TINY_FLUX, _free_port, load_results, offline_env,
                      only_run_dir, read_events, write_gpu_script)

NODE_POWER_W = (300.0, 500.0)
TIMELINE_SCALE = 1.1


def _pixels(run_dir):
    return {p.name: np.asarray(Image.open(p), dtype=np.int16)
            for p in sorted((run_dir / "image_outputs").iterdir())}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("two-nodes")
    base = tmp / "out"
    args = ["--ulysses_degree", "2", *TINY_FLUX, "--workload.base_dir", str(base),
            "--benchmark_iters", "2", "--idle_baseline_s", "0.5"]
    endpoint = f"127.0.0.1:{_free_port()}"
    launchers = []
    for node, watts in enumerate(NODE_POWER_W):
        script = write_gpu_script(tmp / f"node{node}.json", tmp / f"node{node}-events.jsonl",
                                  power_w=watts, timeline_scale=TIMELINE_SCALE)
        launchers.append(subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc_per_node", "1", "--node_rank", str(node), "--rdzv_endpoint", endpoint,
             str(ENTRY), *args],
            cwd=REPO, env=offline_env(tmp, MLENERGY_FAKE_GPUS=str(script)),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    run_dir = only_run_dir(base)
    events = [read_events(tmp / f"node{node}-events.jsonl") for node in (0, 1)]
    return run_dir, load_results(run_dir), logs, events


def test_two_node_launch_on_loopback_equals_one_node_with_two_processes(two_nodes,
                                                                        ulysses2_scripted_run):
    run_two, doc_two, logs, _ = two_nodes
    run_one, doc_one = ulysses2_scripted_run.run_dir, ulysses2_scripted_run.doc
    assert run_two.name == run_one.name
    assert (doc_two["num_processes"], doc_two["ulysses_degree"]) == (2, 2)
    assert [it["prompts"] for it in doc_two["iterations"]] == \
        [it["prompts"] for it in doc_one["iterations"]]
    assert [it["images"] for it in doc_two["iterations"]] == \
        [it["images"] for it in doc_one["iterations"]]
    # Rank 0 (node 0) writes the results; the images come from the last rank, on node 1.
    assert "Results written" in logs[0]
    images_two, images_one = _pixels(run_two), _pixels(run_one)
    assert list(images_two) == list(images_one) and len(images_two) == 4
    for name, a in images_one.items():
        diff = np.abs(a - images_two[name])
        assert diff.max() <= 1 and (diff > 0).mean() < 0.001, (name, diff.max())
        assert a.std() > 0


def test_each_nodes_gpu_keeps_its_global_key_and_the_windows_merge(two_nodes):
    _, doc, _, events = two_nodes
    assert doc["num_gpus"] == 2 and doc["energy_measured"] is True
    windows = [doc["energy_measurement"], *doc["iteration_energy_measurements"]]
    for window in windows:
        energy = window["gpu_energy"]
        assert list(energy) == ["0", "1"]
        # Each node timed its own window between the same fences; the merged window is the
        # longer of the two.
        seconds = {gpu: energy[gpu] / watts for gpu, watts in zip("01", NODE_POWER_W)}
        assert max(seconds.values()) == pytest.approx(window["time"], rel=1e-4)
        assert min(seconds.values()) > 0
    # At most both GPUs' power: a node's window may be a little shorter than the merged one.
    assert sum(NODE_POWER_W) / 2 < doc["average_power_watts"] <= sum(NODE_POWER_W) * (1 + 1e-4)
    # Both nodes' samples and counters, under the same global keys.
    assert set(doc["timeline"]["power"]["device_instant"]) == {"0", "1"}
    assert set(doc["timeline"]["temperature"]) == {"0", "1"}
    nvml = doc["energy_cross_check"]["nvml"]
    assert set(nvml["nvml_gpu_energy_j"]) == {"0", "1"}
    assert abs(nvml["relative_difference"]) < 0.25
    assert doc["idle_baseline"]["mean_power_w"] == {
        "0": pytest.approx(300.0 * TIMELINE_SCALE), "1": pytest.approx(500.0 * TIMELINE_SCALE)}
    # Each node's local rank 0 opened and closed every window.
    for node in (0, 1):
        opened = [e["name"] for e in events[node] if e["event"] == "begin"]
        assert opened == ["benchmark", "iteration-0", "iteration-1"]
        assert {e["rank"] for e in events[node]} == {node}


def test_the_timeline_self_check_fails_when_the_timeline_reads_high(two_nodes):
    check = two_nodes[1]["energy_cross_check"]["timeline"]
    assert check["relative_difference"] == pytest.approx(TIMELINE_SCALE - 1.0, abs=0.02)
    assert check["within_tolerance"] is False
    assert set(check["timeline_gpu_energy_j"]) == {"0", "1"}
