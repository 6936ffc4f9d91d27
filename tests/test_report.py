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
from mlenergy.diffusion.tools import report, report_plots
from test_toolkit import FIXTURES, toolkit_layout

FLUX_DIR = FIXTURES / "run" / "diffusion" / "text-to-image" / "black-forest-labs" / "FLUX.1-dev"
CPU_FIXTURES = FIXTURES.parent / "cpu_tiny"  # tiny FLUX on CPU, 1 and 2 processes, batch 1 and 2
H100_STEM = "FLUX.1-dev-NVIDIA-H100-80GB-HBM3-random-bfloat16-1024x1024-28steps"


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
    proc = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.tools.report", str(FIXTURES),
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
    for kind in ("pareto", "gpus"):
        assert (out / f"{H100_STEM}-{kind}.png").stat().st_size > 1000
    # One batch size only: a throughput-vs-batch plot would be a single point.
    assert not (out / f"{H100_STEM}-throughput.png").exists()
    assert "J / image" in proc.stdout and ("| FLUX.1-dev | NVIDIA H100 80GB HBM3 | 4 | 4 x 1 | 1 "
                                           "| 1024x1024 | 28 | random | bfloat16 |") in proc.stdout
    # The 95% CI of the mean, from the results' own spread (3 iterations, Student t).
    image = table[table["task"] == "text-to-image"]
    assert (image["energy_per_output_ci95_low_j"] < image["energy_per_output_j"]).all()
    assert (image["energy_per_output_j"] < image["energy_per_output_ci95_high_j"]).all()
    assert (image["batch_latency_ci95_low_s"] < image["batch_latency_s"]).all()
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
    # Each video workload (28 and 50 steps) has one run: nothing to plot for Wan.
    assert not any("Wan" in p.name for p in result["plots"])


def test_pareto_frontier_keeps_only_undominated_points():
    latency = [5.3, 4.9, 3.2, 3.2, 6.0, 4.0]
    energy = [3586, 6992, 5715, 5800, 3500, 5000]
    assert report_plots.pareto_frontier(latency, energy) == [2, 5, 0, 4]


def test_report_of_a_tree_without_results_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.tools.report", str(tmp_path)],
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

    from mlenergy.diffusion.inputs.config import parse_cli
    from mlenergy.diffusion.output import results_writer as results
    from mlenergy.diffusion.planning.plan import make_plan
    from mlenergy.diffusion.process.launch import Launch

    plan = make_plan(parse_cli(shlex.split(argv)),
                     Launch(world_size=1, device_type="cuda", visible_gpus=1))
    assert report.options_label(results.configurations(plan)) == label


def _copy_as(src: Path, dst: Path, **changes) -> None:
    doc = json.loads((src / "results.json").read_text())
    doc.update(changes)
    dst.mkdir(parents=True)
    (dst / "results.json").write_text(json.dumps(doc))


def test_a_tree_mixing_gpus_and_tiny_cpu_runs_never_shares_a_table_or_plot(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(FIXTURES / "run", tree / "h100")
    shutil.copytree(CPU_FIXTURES / "run", tree / "cpu")
    a100 = tree / "a100" / "diffusion" / "text-to-image" / "black-forest-labs" / "FLUX.1-dev"
    for run in ("uly-1+ring-1", "uly-4+ring-1"):
        name = f"batch-1+size-1024x1024+steps-28+seed-48105+{run}+tc-False+weights-random"
        # As a packed sweep records it: the other run that shared the node.
        _copy_as(FLUX_DIR / name, a100 / name, gpu_model="NVIDIA A100-SXM4-80GB",
                 shared_node_runs=[{"run_dir": "elsewhere", "devices": ["7"]}])
    # The same H100 workload with pretrained weights: another group again.
    one = "batch-1+size-1024x1024+steps-28+seed-48105+uly-1+ring-1+tc-False+weights-random"
    _copy_as(FLUX_DIR / one, tree / "pre" / one, weights="pretrained")

    result = report.write_report(tree, tmp_path / "out")
    table = result["table"]
    assert len(table) == 4 + 4 + 2 + 1
    assert set(table["device"]) == {"NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB",
                                    "CPU (AMD EPYC)"}
    shared = table.groupby("device")["shared_node_runs"]
    assert shared.apply(list)["NVIDIA A100-SXM4-80GB"] == [1, 1]
    assert shared.count()["NVIDIA H100 80GB HBM3"] == 0  # not recorded: empty, not 0
    cpu = table[table["device"].str.startswith("CPU")]
    assert (cpu["num_gpus"] == 0).all() and set(cpu["weights"]) == {"tiny"}
    assert cpu["energy_per_output_j"].isna().all()

    a100_stem = "FLUX.1-dev-NVIDIA-A100-SXM4-80GB-random-bfloat16-1024x1024-28steps"
    cpu_stem = "FLUX.1-dev-CPU-AMD-EPYC-tiny-float32-64x64-1steps"
    assert sorted(p.name for p in result["plots"]) == sorted([
        f"{a100_stem}-gpus.png", f"{a100_stem}-pareto.png",
        f"{cpu_stem}-gpus.png", f"{cpu_stem}-throughput.png",
        f"{H100_STEM}-gpus.png", f"{H100_STEM}-pareto.png"])
    md = result["markdown"]
    for heading in ("## text-to-image: NVIDIA H100 80GB HBM3, random weights, bfloat16",
                    "## text-to-image: NVIDIA H100 80GB HBM3, pretrained weights, bfloat16",
                    "## text-to-image: NVIDIA A100-SXM4-80GB, random weights, bfloat16",
                    "## text-to-image: CPU (AMD EPYC), tiny weights, float32",
                    "## text-to-video: NVIDIA H100 80GB HBM3, random weights, bfloat16"):
        assert heading in md
    assert "| FLUX.1-dev | CPU (AMD EPYC) | 0 (2 proc) | 2 x 1 | 2 | 64x64 | 1 | tiny | " \
           "float32 |" in md


def test_malformed_results_are_skipped_with_a_warning_and_links_are_followed_once(tmp_path):
    tree = tmp_path / "tree"
    shutil.copytree(CPU_FIXTURES / "run", tree / "run")
    bad = {"list": "[1, 2]", "foreign": json.dumps({"accuracy": 0.9}),
           "batch0": json.dumps({"model_id": "black-forest-labs/FLUX.1-dev", "batch_size": 0}),
           "truncated": '{"model_id": "black-forest-labs/FLU'}
    for name, text in bad.items():
        (tree / name).mkdir()
        (tree / name / "results.json").write_text(text)
    # A link loop and a second way into the same runs.
    (tree / "run" / "loop").symlink_to(tree, target_is_directory=True)
    (tree / "again").symlink_to(tree / "run", target_is_directory=True)

    proc = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.tools.report", str(tree),
                           "--out_dir", str(tmp_path / "out"), "--no_plots"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = proc.stderr.strip().splitlines()
    assert len(warnings) == 4 and all(w.startswith("warning: ") for w in warnings)
    assert f"warning: {tree / 'list' / 'results.json'} skipped: a JSON list, not an object" \
        in warnings
    assert any("batch0" in w and "batch_size 0 is not a positive integer" in w for w in warnings)
    assert any("foreign" in w and "not a results.json of this benchmark" in w for w in warnings)
    assert len(pd.read_csv(tmp_path / "out" / "runs.csv")) == 4
    assert "Benchmark report: 4 run(s)" in proc.stdout


def test_a_tree_of_only_malformed_results_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "results.json").write_text("[]")
    proc = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.tools.report", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: none of the 1 results.json file(s) under {tmp_path} is a readable result of "
        "this benchmark (see the warnings above)")
