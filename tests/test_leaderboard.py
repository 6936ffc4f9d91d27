"""The ML.ENERGY leaderboard v3, faithfully: its prompt sampling and shared requests files, and
the `leaderboard-v3` sweep preset's points."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from conftest import REPO, load_results, offline_env, only_run_dir, run_benchmark
from mlenergy.diffusion.inputs.config import ConfigError
from mlenergy.diffusion.planning import prompts
from mlenergy.diffusion.sweep import presets
from test_prompts import make_dataset

POOL = [f"prompt number {i}" for i in range(200)]


def v3_sample(pool, seed, batch_size, iterations):
    """What mlenergy-benchmark 3.0.0 does (dataset.py): reseed the global generator, sample
    iterations x batch prompts at once, cut them into requests."""
    random.seed(seed)
    chosen = random.sample(pool, iterations * batch_size)
    return [chosen[i:i + batch_size] for i in range(0, len(chosen), batch_size)]


@pytest.mark.parametrize("seed,batch,iterations", [(48105, 1, 8), (48105, 4, 8), (7, 16, 4)])
def test_leaderboard_sampling_gives_the_leaderboards_requests(seed, batch, iterations):
    assert prompts.leaderboard_batches(POOL, seed, batch, iterations) == v3_sample(
        POOL, seed, batch, iterations)
    schedule = prompts.leaderboard_schedule(POOL, seed, batch, 2, iterations)
    assert schedule.measured == v3_sample(POOL, seed, batch, iterations)
    measured = {p for b in schedule.measured for p in b}
    assert len(schedule.warmup) == 2 and not measured & {p for b in schedule.warmup for p in b}


def test_a_small_pool_repeats_in_order_as_the_leaderboard_does():
    assert prompts.leaderboard_batches(["a", "b", "c"], 0, 2, 2) == [["a", "b"], ["c", "a"]]


def test_requests_files_round_trip_and_schedule_in_order(tmp_path):
    batches = prompts.leaderboard_batches(POOL, 48105, 2, 3)
    name = prompts.requests_file_name(2, 3, 48105)
    assert name == "requests-batch-2-iters-3-seed-48105.json"
    path = prompts.write_requests_file(tmp_path / name, batches)
    assert json.loads(path.read_text()) == [{"batch_size": 2, "prompts": b} for b in batches]
    assert prompts.read_requests_file(path) == batches
    assert prompts.read_prompts_file(path) == [p for b in batches for p in b]
    schedule = prompts.requests_schedule(batches, 2, 1, 2)
    assert schedule.measured == batches[:2] and schedule.warmup == [batches[2]]
    with pytest.raises(prompts.PromptsError, match="run it with --workload.batch_size 2"):
        prompts.requests_schedule(batches, 4, 1, 2)
    with pytest.raises(prompts.PromptsError, match="pass --benchmark_iters 3"):
        prompts.requests_schedule(batches, 2, 0, 8)
    (tmp_path / "bad.json").write_text('[{"batch_size": 1}]')
    with pytest.raises(prompts.PromptsError, match="request 0 has no \"prompts\""):
        prompts.read_requests_file(tmp_path / "bad.json")


def test_a_mismatched_requests_file_ends_the_run_in_one_line(tmp_path):
    from mlenergy.diffusion.inputs.config import parse_cli

    path = prompts.write_requests_file(tmp_path / "r.json", [["a", "b"]])
    workload = parse_cli(["workload:t2i", "--workload.prompts_file", str(path)]).workload
    with pytest.raises(ConfigError, match="holds batches of 2 prompts"):
        prompts.schedule_for(workload, ["a", "b"], 1, 1, 1, 1)


def test_exported_requests_feed_the_same_prompts_to_a_run(tmp_path):
    dataset = make_dataset(tmp_path / "train.parquet", POOL)
    export = subprocess.run(
        [sys.executable, "-m", "mlenergy.diffusion.planning.prompts", "--batch_size", "2",
         "--iterations", "2", "--prompt_dataset", str(dataset), "--out_dir", str(tmp_path)],
        cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert export.returncode == 0, export.stderr[-2000:]
    exported = tmp_path / "requests-batch-2-iters-2-seed-48105.json"
    assert export.stdout.strip() == str(exported)
    assert prompts.read_requests_file(exported) == v3_sample(POOL, 48105, 2, 2)

    common = ["workload:t2i", "--workload.weights", "tiny", "--workload.batch_size", "2",
              "--workload.height", "64", "--workload.width", "64",
              "--workload.inference_steps", "1", "--benchmark_iters", "2", "--no_save_images",
              "--no_count_flops"]
    sampled = run_benchmark([*common, "--workload.prompt_sampling", "leaderboard",
                             "--workload.prompt_dataset", str(dataset),
                             "--workload.base_dir", str(tmp_path / "sampled")], tmp_path)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    fed = run_benchmark([*common, "--workload.prompts_file", str(exported),
                         "--workload.seed", "1", "--workload.base_dir", str(tmp_path / "fed")],
                        tmp_path)
    assert fed.returncode == 0, fed.stderr[-3000:]
    for base in ("sampled", "fed"):
        doc = load_results(only_run_dir(tmp_path / base))
        assert [it["prompts"] for it in doc["iterations"]] == v3_sample(POOL, 48105, 2, 2), base
    assert load_results(only_run_dir(tmp_path / "sampled"))["prompt_sampling"] == "leaderboard"


# The leaderboard-v3 preset, as ML.ENERGY v3 ran it: model -> flags beyond the registry defaults.
V3_IMAGE = {
    "black-forest-labs/FLUX.1-dev": ["--workload.inference_steps", "50"],
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": [],
    "stabilityai/stable-diffusion-3.5-medium": ["--workload.guidance_scale", "7.0"],
    "stabilityai/stable-diffusion-3.5-large": ["--workload.guidance_scale", "7.0"],
    "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers": ["--workload.dtype", "bfloat16"],
    "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers": [],
    "Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers": [],
}
V3_VIDEO = {
    "zai-org/CogVideoX-2b": ["--workload.dtype", "bfloat16"],
    "zai-org/CogVideoX1.5-5B": [],
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": ["--workload.flow_shift", "12"],
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": ["--workload.flow_shift", "12"],
    "tencent/HunyuanVideo": [],
    "maxin-cn/Latte-1": ["--workload.dtype", "bfloat16"],
}
V3_PARALLEL = [(1, 1), (1, 2), (2, 1), (1, 4), (2, 2), (4, 1), (1, 8), (2, 4), (4, 2), (8, 1)]
V3_BATCHES = {"text-to-image": [1, 2, 4, 8, 16], "text-to-video": [1, 2, 4, 8, 16]}


@pytest.mark.parametrize("task,table", [("text-to-image", V3_IMAGE), ("text-to-video", V3_VIDEO)])
def test_the_leaderboard_v3_points_match_the_table(task, table, tmp_path):
    import tyro

    from mlenergy.diffusion.sweep import command_line as sweep_cli, grid as sweep_grid

    own, benchmark_args = sweep_cli.split_benchmark_args(
        ["--preset", "leaderboard-v3", "--task", task, "--out_dir", str(tmp_path), "--",
         "--no_save_images"])
    args = tyro.cli(sweep_cli.SweepArgs, args=own, use_underscores=True)
    points = sweep_grid.make_points(sweep_cli.make_grid(args, benchmark_args))
    got = sorted((p.model_id, p.batch_size, p.ulysses_degree, p.ring_degree,
                  # What follows the grid's own flags (the last of which is the ring degree).
                  tuple(p.benchmark_args[p.benchmark_args.index("--ring_degree") + 2:]))
                 for p in points)
    want = sorted((model, batch, u, r, ("--workload.prompt_sampling", "leaderboard", *flags,
                                        "--no_save_images"))
                  for model, flags in table.items() for (u, r) in V3_PARALLEL
                  for batch in V3_BATCHES[task])
    assert got == want


def test_the_leaderboard_v3_dry_run_lists_its_points(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mlenergy.diffusion.sweep", "--preset", "leaderboard-v3",
         "--dry_run", "--device", "cuda", "--gpus", "8", "--out_dir", str(tmp_path), "--",
         "--workload.weights", "random"],
        cwd=REPO, env=offline_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    *lines, totals = proc.stdout.splitlines()
    commands = [line for line in lines if not line.startswith("#")]
    skipped = [line for line in lines if line.startswith("# skipped")]
    # Heads that Ulysses 4 and 8 do not divide: SD3.5-large (38) and SANA (70).
    assert len(skipped) == 3 * 5 * 3 and all("attention heads" in line for line in skipped)
    # One launch per model and degree pair measures its five batch sizes.
    assert len(commands) == len(V3_IMAGE) * 10 - 3 * 3 == 61
    assert all(c.count(" --then ") == 4 for c in commands)
    processes = sum(int(c.split('--nproc_per_node=')[1].split()[0]) if 'nproc' in c else 1
                    for c in commands)
    assert totals == (f"# {len(V3_IMAGE) * 5 * 10 - len(skipped)} point(s) to run in "
                      f"{len(commands)} launch(es) ({processes} GPU processes in all); "
                      f"{len(skipped)} skipped")
    flux = [c for c in commands if "FLUX.1-dev" in c]
    assert len(flux) == 10 and all(c.count("--workload.inference_steps 50") == 5
                                   and c.count("--workload.prompt_sampling leaderboard") == 5
                                   for c in flux)
    assert not (tmp_path / "diffusion").exists()


def test_a_preset_prints_what_to_download_ahead():
    lines = presets.download_commands("leaderboard-v3")
    # With --include patterns: the files each pipeline loads (tests/test_tools.py has them).
    assert any(line.startswith("hf download tencent/HunyuanVideo --revision refs/pr/18 "
                               "--include model_index.json ") for line in lines)
    assert any(line.startswith("hf download Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers "
                               "--include ") for line in lines)
    assert len(lines) == len(V3_IMAGE) + len(V3_VIDEO)
    out = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.sweep.presets", "leaderboard-v3"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == lines
