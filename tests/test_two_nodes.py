"""Two "nodes" on one machine: two torchrun launchers meeting at one rendezvous endpoint on the
loopback address, one process each, give the results of one launcher with two processes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from conftest import ENTRY, REPO, _free_port, load_results, offline_env, only_run_dir, run_benchmark


def _pixels(run_dir):
    return {p.name: np.asarray(Image.open(p), dtype=np.int16)
            for p in sorted((run_dir / "image_outputs").iterdir())}


def test_two_node_launch_on_loopback_equals_one_node_with_two_processes(tmp_path, tiny_flux_args):
    one_node, two_nodes = tmp_path / "one-node", tmp_path / "two-nodes"
    args = ["--ulysses_degree", "2", *tiny_flux_args(two_nodes, "--benchmark_iters", "2")]
    endpoint = f"127.0.0.1:{_free_port()}"
    launchers = [
        subprocess.Popen(
            [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
             "--nproc_per_node", "1", "--node_rank", str(node), "--rdzv_endpoint", endpoint,
             str(ENTRY), *args],
            cwd=REPO, env=offline_env(tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        for node in (0, 1)
    ]
    logs = [p.communicate(timeout=300)[0] for p in launchers]
    assert [p.returncode for p in launchers] == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    single = run_benchmark(["--ulysses_degree", "2",
                            *tiny_flux_args(one_node, "--benchmark_iters", "2")],
                           tmp_path, nproc=2)
    assert single.returncode == 0, single.stderr[-3000:]

    run_two, run_one = only_run_dir(two_nodes), only_run_dir(one_node)
    assert run_two.name == run_one.name
    doc_two, doc_one = load_results(run_two), load_results(run_one)
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
