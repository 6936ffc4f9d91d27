"""Real H100 results (tests/fixtures/h100, 2026-11-26) load in the ML.ENERGY data toolkit.

The fixtures are results.json files of `scripts/gpu/h100_scaling.sh eager` (FLUX.1-dev, random
full-size weights, 1024x1024, 28 steps, batch 1) on 1 GPU, Ulysses 4, and Ulysses 2 x ring 2,
and of `scripts/gpu/h100_video.sh one` (Wan2.1-T2V-1.3B at its defaults, one video).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlenergy.data.records.runs as runs_module
import pytest

FIXTURES = Path(__file__).parent / "fixtures" / "h100"


def toolkit_layout(tmp_path: Path) -> tuple[Path, Path]:
    """<root>/diffusion/<gpu>/current/run/... with model_info.json in a config dir."""
    root = tmp_path / "results"
    run_link = root / "diffusion" / "h100" / "current" / "run"
    run_link.parent.mkdir(parents=True)
    run_link.symlink_to(FIXTURES / "run", target_is_directory=True)
    config_dir = tmp_path / "configs"
    for model in ("text-to-image/black-forest-labs/FLUX.1-dev",
                  "text-to-video/Wan-AI/Wan2.1-T2V-1.3B-Diffusers"):
        (config_dir / model).mkdir(parents=True)
        shutil.copy(FIXTURES / "run" / "diffusion" / model / "model_info.json",
                    config_dir / model)
    return root, config_dir


def test_gpu_results_load_with_the_right_gpu_count_and_energy(tmp_path):
    root, config_dir = toolkit_layout(tmp_path)
    df = runs_module.DiffusionRuns.from_raw_results(root, config_dir=config_dir).to_dataframe()
    assert len(df) == 4
    assert set(df["task"]) == {"text-to-image", "text-to-video"}
    assert set(df["gpu_model"]) == {"H100"}
    images = df[df["task"] == "text-to-image"]
    for results in sorted((FIXTURES / "run" / "diffusion" / "text-to-image").rglob("results.json")):
        doc = json.loads(results.read_text())
        row = images[(images["ulysses_degree"] == doc["ulysses_degree"])
                     & (images["ring_degree"] == doc["ring_degree"])]
        assert len(row) == 1
        row = row.iloc[0]
        assert row["num_gpus"] == doc["num_gpus"] == doc["ulysses_degree"] * doc["ring_degree"]
        # Each iteration measured every GPU of the run.
        assert all(len(m["gpu_energy"]) == doc["num_gpus"]
                   for m in doc["iteration_energy_measurements"])
        # The toolkit's numbers are ours.
        assert row["energy_per_generation_joules"] == pytest.approx(doc["energy_per_image"])
        assert row["batch_latency_s"] == pytest.approx(doc["latency_per_iteration"]["mean"])
        assert row["avg_power_watts"] == pytest.approx(doc["average_power_watts"])
        assert row["energy_per_generation_joules"] > 0
        assert row["total_params_billions"] == pytest.approx(11.901)


def test_gpu_video_results_load_as_text_to_video_with_energy_per_video(tmp_path):
    root, config_dir = toolkit_layout(tmp_path)
    df = runs_module.DiffusionRuns.from_raw_results(root, config_dir=config_dir).to_dataframe()
    video = df[df["task"] == "text-to-video"]
    assert len(video) == 1
    row = video.iloc[0]
    doc = json.loads(next((FIXTURES / "run" / "diffusion" / "text-to-video")
                          .rglob("results.json")).read_text())
    assert row["model_id"] == doc["model_id"] == "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    assert (doc["num_frames"], doc["fps"]) == (81, 15) and row["num_gpus"] == 1
    assert row["energy_per_generation_joules"] == pytest.approx(doc["energy_per_video"])
    assert row["energy_per_generation_joules"] > 0
    assert row["batch_latency_s"] == pytest.approx(doc["avg_time_per_video"])
    assert row["total_params_billions"] == pytest.approx(1.419)
