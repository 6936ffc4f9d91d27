"""The report's numbers are the ML.ENERGY toolkit's, on real H100 runs (tests/fixtures/h100)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlenergy.data.records.runs as runs_module
import pandas as pd
import pytest

from conftest import REPO
from mlenergy.diffusion import report
from test_toolkit import FIXTURES, toolkit_layout

FLUX_DIR = FIXTURES / "run" / "diffusion" / "text-to-image" / "black-forest-labs" / "FLUX.1-dev"


def _toolkit_rows(root: Path, config_dir: Path) -> pd.DataFrame:
    return runs_module.DiffusionRuns.from_raw_results(root, config_dir=config_dir).to_dataframe()


def _matches(table: pd.DataFrame, toolkit: pd.DataFrame) -> None:
    assert len(table) == len(toolkit)
    for _, ours in table.iterrows():
        theirs = toolkit[(toolkit["task"] == ours["task"])
                         & (toolkit["ulysses_degree"] == ours["ulysses_degree"])
                         & (toolkit["ring_degree"] == ours["ring_degree"])
                         & (toolkit["batch_size"] == ours["batch_size"])]
        assert len(theirs) == 1
        theirs = theirs.iloc[0]
        assert ours["num_gpus"] == theirs["num_gpus"]
        assert ours["energy_per_output_j"] == pytest.approx(theirs["energy_per_generation_joules"],
                                                            rel=1e-12)
        assert ours["batch_latency_s"] == pytest.approx(theirs["batch_latency_s"], rel=1e-12)
        assert ours["avg_power_w"] == pytest.approx(theirs["avg_power_watts"], rel=1e-12)
        assert ours["throughput_per_s"] == pytest.approx(
            theirs["throughput_generations_per_sec"], rel=1e-12)
        assert ours["energy_per_output_j"] > 0


def test_report_numbers_equal_the_toolkit_on_gpu_runs_and_plots_are_written(tmp_path):
    root, config_dir = toolkit_layout(tmp_path)
    out = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.report", str(FIXTURES),
                           "--out_dir", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = pd.read_parquet(out / "runs.parquet")
    assert len(pd.read_csv(out / "runs.csv")) == 4  # three FLUX images, one Wan video
    _matches(table, _toolkit_rows(root, config_dir))
    assert set(table["gpu_model"]) == {"NVIDIA H100 80GB HBM3"}
    assert table["peak_memory_gb"].min() > 15
    assert list(table.sort_values("task")["output"]) == ["image"] * 3 + ["video"]
    assert not any(c.startswith("stage_") for c in table)
    for kind in ("pareto", "gpus", "throughput"):
        assert (out / f"FLUX.1-dev-{kind}.png").stat().st_size > 1000
    assert "J / image" in proc.stdout and "| FLUX.1-dev | NVIDIA H100 80GB HBM3 | 4 | 4 x 1 |" \
        in proc.stdout
    assert (out / "report.md").read_text().strip() in proc.stdout


def test_video_runs_say_joules_per_video_and_stage_split_is_read(tmp_path):
    """A video-shaped run (the toolkit reads num_frames and fps) and a stage breakdown."""
    root, config_dir = toolkit_layout(tmp_path)
    video_model = Path("text-to-video/Wan-AI/Wan2.1-T2V-1.3B-Diffusers")
    tree = tmp_path / "tree"
    shutil.copytree(FIXTURES / "run", tree / "run")
    src = FLUX_DIR / "batch-1+size-1024x1024+steps-28+seed-48105+uly-4+ring-1+tc-False+weights-random"
    doc = json.loads((src / "results.json").read_text())
    doc.update(model_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers", task="text-to-video", batch_size=2,
               num_frames=81, fps=15, height=480, width=832)
    doc["stage_breakdown"] = {
        "text_encoding": {"time_s": 0.05, "energy_j": 12.0},
        "denoising": {"time_s": 3.0, "energy_j": None},
        "decoding": {"time_s": 0.1, "energy_j": 40.0},
        "remainder": {"time_s": 0.01, "energy_j": 1.0},
    }
    run_dir = tree / "run" / "diffusion" / video_model / (
        "batch-2+size-480x832+steps-28+seed-48105+uly-4+ring-1+tc-False+weights-random")
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(doc))
    (config_dir / video_model).mkdir(parents=True, exist_ok=True)
    (config_dir / video_model / "model_info.json").write_text(
        json.dumps({"total_parameters_billion": 1.3}))
    (root / "diffusion" / "h100" / "current" / "run").unlink()
    (root / "diffusion" / "h100" / "current" / "run").symlink_to(tree / "run")

    result = report.write_report(tree, tmp_path / "out")
    table = result["table"]
    _matches(table, _toolkit_rows(root, config_dir))
    video = table[(table["task"] == "text-to-video") & (table["batch_size"] == 2)].iloc[0]
    assert video["output"] == "video" and video["num_frames"] == 81 and video["fps"] == 15
    # J per video: mean summed GPU energy per iteration over the batch of 2.
    energies = [sum(m["gpu_energy"].values()) for m in doc["iteration_energy_measurements"]]
    assert video["energy_per_output_j"] == pytest.approx(sum(energies) / len(energies) / 2)
    assert video["stage_denoising_time_s"] == 3.0 and pd.isna(video["stage_denoising_energy_j"])
    assert video["stage_decoding_energy_j"] == 40.0
    assert pd.isna(table[table["task"] == "text-to-image"]["stage_denoising_time_s"]).all()
    md = result["markdown"]
    assert "## text-to-video" in md and "J / video" in md and "videos / s" in md
    assert "480x832x81f" in md and "text 0.05 / denoise 3 / decode 0.1 / rest 0.01" in md
    assert (tmp_path / "out" / "Wan2.1-T2V-1.3B-Diffusers-pareto.png").exists()


def test_pareto_frontier_keeps_only_undominated_points():
    latency = [5.3, 4.9, 3.2, 3.2, 6.0, 4.0]
    energy = [3586, 6992, 5715, 5800, 3500, 5000]
    assert report.pareto_frontier(latency, energy) == [2, 5, 0, 4]


def test_report_of_a_tree_without_results_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.report", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: no results.json under {tmp_path}; point the report "
                                   "at a run tree (e.g. run/ after a sweep)")


@pytest.mark.parametrize("argv,label", [
    ("workload:t2i", ""),
    ("--use_torch_compile workload:t2i", "compile"),
    ("--use_torch_compile --compile_scope blocks --use_fbcache workload:t2i",
     "compile(blocks)+fbcache"),
    ("--use_torch_compile --compile_mode max-autotune-no-cudagraphs --use_fbcache "
     "--cache_threshold 1.0 --use_fp8_t5_encoder --attention_backend cudnn workload:t2i",
     "compile(max-autotune-no-cudagraphs)+fp8-t5+fbcache(1)+attn-cudnn"),
])
def test_runs_that_differ_in_an_option_setting_get_different_labels(argv, label):
    import shlex

    from mlenergy.diffusion import results
    from mlenergy.diffusion.config import parse_cli
    from mlenergy.diffusion.launch import Launch
    from mlenergy.diffusion.plan import make_plan

    plan = make_plan(parse_cli(shlex.split(argv)),
                     Launch(world_size=1, device_type="cuda", visible_gpus=1))
    assert report.options_label(results.configurations(plan)) == label
