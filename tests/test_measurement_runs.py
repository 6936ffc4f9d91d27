"""Per-stage and per-step records of real tiny runs, in one process and two (Ulysses 2)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO, load_results, only_run_dir, run_benchmark
from mlenergy.diffusion.models.families import FAMILIES
from mlenergy.diffusion.probes import flops

STEPS = 3
ITERS = 2


def measured_run(tmp_path, tiny_flux_args, nproc: int):
    base = tmp_path / f"out{nproc}"
    extra = ["--ulysses_degree", "2"] if nproc == 2 else []
    args = [*extra, *tiny_flux_args(base, "--benchmark_iters", str(ITERS),
                                    "--workload.inference_steps", str(STEPS), "--no_save_images")]
    proc = run_benchmark(args, tmp_path, nproc=nproc)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(base)
    return run_dir, load_results(run_dir)


def check_stages_add_up(doc: dict) -> None:
    assert list(doc["stage_breakdown"]) == ["text_encoding", "denoising", "decoding", "remainder"]
    for it in doc["iterations"]:
        stages = it["stages"]
        assert stages["text_encoding"]["calls"] == 2  # CLIP and T5
        assert stages["denoising"]["calls"] == STEPS and stages["decoding"]["calls"] >= 1
        for name in ("text_encoding", "denoising", "decoding"):
            assert stages[name]["time_s"] > 0 and stages[name]["energy_j"] is None
        parts = sum(stages[s]["time_s"] for s in ("text_encoding", "denoising", "decoding"))
        # The stages are windows inside the iteration's, as their rank saw it: they may only
        # fall short of it.
        start, end = it["stage_rank_window"]
        assert stages["remainder"]["time_s"] == pytest.approx(end - start - parts)
        assert 0 <= stages["remainder"]["time_s"] < it["time"]
        # The same iteration as rank 0's window: ranks leave a barrier apart by the scheduler's
        # latency (milliseconds on a busy CPU), so the windows overlap rather than coincide.
        overlap = min(end, it["end_time"]) - max(start, it["start_time"])
        assert overlap > 0.5 * min(end - start, it["end_time"] - it["start_time"])
        bounds = {name: (a, b) for name, a, b in it["stage_boundaries"]}
        assert bounds["text_encoding"][1] <= bounds["denoising"][0]
        assert bounds["denoising"][1] <= bounds["decoding"][0] + 1e-6
        assert start <= bounds["text_encoding"][0] and bounds["decoding"][1] <= end
        steps = it["steps"]
        assert steps["source"] == "step-end callback" and len(steps["latency_s"]) == STEPS
        assert all(s > 0 for s in steps["latency_s"])
        assert 0.3 * stages["denoising"]["time_s"] <= sum(steps["latency_s"]) \
            <= stages["denoising"]["time_s"]
        assert steps["median"] == sorted(steps["latency_s"])[1]
    mean_denoising = sum(it["stages"]["denoising"]["time_s"] for it in doc["iterations"]) / ITERS
    assert doc["stage_breakdown"]["denoising"]["time_s"] == pytest.approx(mean_denoising)
    assert all(v["energy_j"] is None for v in doc["stage_breakdown"].values())
    assert doc["steps"]["n"] == ITERS * STEPS


def tiny_flux_hand_count(height=128, width=128, text=16, batch=2) -> dict:
    return flops.flux_forward_flops(FAMILIES["flux"].tiny["transformer"], height, width, text, batch)


def test_one_process_records_stages_steps_statistics_and_the_floor(tmp_path, tiny_flux_args):
    run_dir, doc = measured_run(tmp_path, tiny_flux_args, 1)
    check_stages_add_up(doc)
    assert doc["stage_fence"] == "sync+barrier"
    for key in ("latency_per_image_stats", "latency_per_iteration"):
        s = doc[key]
        assert s["n"] == ITERS and s["min"] <= s["median"] <= s["max"]
        assert s["ci95"][0] <= s["mean"] <= s["ci95"][1]
    assert doc["latency_per_image_stats"]["mean"] == pytest.approx(doc["avg_time_per_image"])
    assert doc["energy_per_image_stats"] is None
    assert doc["steadiness"]["cv_limit"] == 0.05 and doc["steadiness"]["steady"] in (True, False)
    floor = doc["physical_floor"]
    hand = tiny_flux_hand_count()
    assert floor["flops_per_forward"] == hand["total"]
    assert floor["attention_flops_per_forward"] == hand["attention"]
    assert floor["analytic_flops_per_forward"] == hand["total"]
    assert floor["forwards_per_iteration"] == STEPS and floor["mfu"] is None
    # No GPU: no timelines, no idle baseline, no plot, no checks; never a 0 J.
    assert set(doc["timeline"]) == {"benchmark_start_time", "benchmark_end_time"}
    assert doc["idle_baseline"] is None and doc["gpu_exclusivity"] is None
    assert doc["energy_cross_check"] == {"nvml": None, "timeline": None}
    assert doc["host_energy"]["cpu_energy_j"] is None
    assert not (run_dir / "power_timeline.png").exists()
    log = (run_dir / "driver_log.txt").read_text()
    assert "denoising" in log and "step latency" in log and "FLOP / forward" in log


def test_two_processes_ulysses_2_take_decoding_from_the_rank_that_decodes(tmp_path, tiny_flux_args):
    _, doc = measured_run(tmp_path, tiny_flux_args, 2)
    check_stages_add_up(doc)
    # xDiT decodes on the last rank only, so no barrier may sit in the decoder's hooks.
    assert doc["stage_fence"] == "local-sync"
    assert all(it["stages"]["decoding"]["rank"] == 1 for it in doc["iterations"])
    floor = doc["physical_floor"]
    hand = tiny_flux_hand_count()
    # Each rank does half the tokens' work and repeats the per-sample embeddings.
    assert floor["counted_on_ranks"] == 2
    assert floor["flops_per_forward"] == hand["total"] + hand["per_sample"]
    assert floor["attention_flops_per_forward"] == hand["attention"]


def test_measurement_checker_refuses_a_run_without_gpu_measurements(tmp_path, tiny_flux_args):
    run_dir, _ = measured_run(tmp_path, tiny_flux_args, 1)
    proc = subprocess.run([sys.executable, "scripts/check_measurement.py", str(run_dir)],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1
    assert "denoising energy was not measured" in proc.stderr
    assert "no power timeline" in proc.stderr and "text_encoding" in proc.stdout
