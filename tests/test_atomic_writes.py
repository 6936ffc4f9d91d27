"""A reader never sees half a results file: a write that fails midway leaves the old file as it
was and no temporary file behind, whether the failure is the data's or the disk's."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

import pytest

from conftest import REPO, TINY_FLUX, offline_env, write_gpu_script
from mlenergy.diffusion.inputs.config import parse_cli
from mlenergy.diffusion.output import rundir
from mlenergy.diffusion.planning.plan import make_plan
from mlenergy.diffusion.process.launch import Launch
from mlenergy.diffusion.results import files

OLD = {"old": "results of an earlier run"}


def test_a_write_that_fails_midway_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / files.RESULTS
    path.write_text(json.dumps(OLD))
    before = path.read_bytes()
    # Far more than a write buffer of text goes out before the value that cannot be written.
    doc = {"iterations": ["x" * 1000] * 200, "unwritable": object()}
    with pytest.raises(TypeError):
        files.write_json_atomically(path, doc)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [files.RESULTS]
    files.write_json_atomically(path, {"new": 1})
    assert json.loads(path.read_text()) == {"new": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == [files.RESULTS]


def _small_files_only(limit_bytes: int):
    def limit():
        # A full disk, as the writer sees it: writing past the limit fails with EFBIG.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return limit


def test_a_run_that_cannot_finish_writing_its_results_leaves_the_old_ones(tmp_path):
    """--overwrite_results over an earlier results.json, on a disk that takes the run's small
    files (requests, model info, its log so far) but not the results."""
    args = [*TINY_FLUX, "--workload.base_dir", str(tmp_path / "out"), "--warmup_iters", "0",
            "--benchmark_iters", "1", "--no_save_images", "--idle_baseline_s", "0",
            "--overwrite_results"]
    run_dir = make_plan(parse_cli(args), Launch()).run_dir
    run_dir.mkdir(parents=True)
    results = run_dir / files.RESULTS
    results.write_text(json.dumps(OLD))
    before = results.read_bytes()
    gpus = write_gpu_script(tmp_path / "gpus.json", power_w=300.0)
    proc = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.benchmark", *args],
                          cwd=REPO, env=offline_env(tmp_path, MLENERGY_FAKE_GPUS=str(gpus)),
                          capture_output=True, text=True, timeout=300,
                          preexec_fn=_small_files_only(4096))
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "error: rank 0 failed: OSError: [Errno 27] File too large" in proc.stderr
    # The run got as far as its results: the files written just before them are there.
    assert (run_dir / files.REQUESTS).is_file() and (run_dir / files.DRIVER_LOG).is_file()
    assert (tmp_path / "out" / files.MODEL_INFO).is_file()
    # The old results were moved aside, whole, before the run wrote anything (never old results
    # beside new files); the failed write left neither results nor a temporary file.
    [parked] = (tmp_path / "out" / rundir.SUPERSEDED_DIR).iterdir()
    assert (parked / rundir.SUPERSEDED_RESULTS).read_bytes() == before
    assert not results.exists()
    assert [p.name for p in run_dir.iterdir() if p.name.endswith(".tmp")] == []
