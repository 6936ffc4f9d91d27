"""A probe added as a new one is (a module, and its class in ADDED_PROBES) is started, told of
every iteration on every rank, gathered, and written into results.json under its own key, with
nothing else in results.json moved."""

from __future__ import annotations

from conftest import REPO, TINY_FLUX, load_results, only_run_dir, run_benchmark, with_flags

WORKER = REPO / "tests" / "workers" / "benchmark_with_added_probe.py"


def test_an_added_probes_section_is_gathered_from_every_rank_and_written(tmp_path):
    base = tmp_path / "out"
    args = with_flags([*TINY_FLUX, "--workload.base_dir", str(base)], "--ulysses_degree", "2",
                      "--warmup_iters", "1", "--benchmark_iters", "3", "--no_save_images",
                      "--idle_baseline_s", "0")
    proc = run_benchmark(args, tmp_path, nproc=2, entry=WORKER)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = load_results(only_run_dir(base))
    assert doc["iterations_seen_by_an_added_probe"] == {"warmup_per_rank": [1, 1],
                                                        "measured_per_rank": [3, 3]}
    keys = list(doc)
    # After every section of the run's own, before the run's identity, which stays last.
    assert keys[-2:] == ["iterations_seen_by_an_added_probe", "run_identity"]
    assert keys.index("attention") < keys.index("iterations_seen_by_an_added_probe")
