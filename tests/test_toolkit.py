"""Real H100 results (tests/fixtures/h100, 2026-11-26) load in the ML.ENERGY data toolkit.

The fixtures are results.json files of `scripts/gpu/h100_scaling.sh eager` (FLUX.1-dev, random
full-size weights, 1024x1024, 28 steps, batch 1) on 1 GPU, Ulysses 4, and Ulysses 2 x ring 2.
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
    model = "text-to-image/black-forest-labs/FLUX.1-dev"
    (config_dir / model).mkdir(parents=True)
    shutil.copy(FIXTURES / "run" / "diffusion" / model / "model_info.json", config_dir / model)
    return root, config_dir


def test_gpu_results_load_with_the_right_gpu_count_and_energy(tmp_path):
    root, config_dir = toolkit_layout(tmp_path)
    df = runs_module.DiffusionRuns.from_raw_results(root, config_dir=config_dir).to_dataframe()
    assert len(df) == 3
    assert set(df["task"]) == {"text-to-image"} and set(df["gpu_model"]) == {"H100"}
    for results in sorted(FIXTURES.rglob("results.json")):
        doc = json.loads(results.read_text())
        row = df[(df["ulysses_degree"] == doc["ulysses_degree"])
                 & (df["ring_degree"] == doc["ring_degree"])]
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
