"""Compiled ring attention: xDiT's ring path traced whole once its version check is constant."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import REPO, _free_port, offline_env


def test_ring_attention_compiles_in_one_graph_and_matches_full_attention(tmp_path):
    report = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
         str(_free_port()), str(REPO / "tests" / "workers" / "ring_attention_compiled.py")],
        cwd=REPO, env=offline_env(tmp_path, REPORT=str(report)), capture_output=True, text=True,
        timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(report.read_text())
    # Patched once; a second call finds it done.
    assert result["changed"] == [True, False]
    assert result["version_answer"] is True
    # fullgraph=True: any graph break would have raised instead of returning.
    assert result["compiled_vs_eager"] < 1e-6
    # The ring over two processes computes the attention of the whole sequence.
    assert result["eager_vs_full_attention"] < 1e-5
