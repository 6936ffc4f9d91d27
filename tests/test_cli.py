"""The command line: spellings, the reference README's commands, defaults and validation."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from conftest import REPO
from mlenergy.diffusion.inputs.config import (
    BenchmarkConfig, ConfigError, TextToImage, normalize_argv, parse_cli,
)
from mlenergy.diffusion.planning.plan import make_plan
from mlenergy.diffusion.process.launch import Launch

# The original README's commands, minus the launcher; each with the processes it launched.
README_COMMANDS = [
    (1, "--ulysses_degree 1 --ring_degree 1 workload:text-to-image --workload.model_id "
        "black-forest-labs/FLUX.1-dev --workload.base_dir run/diffusion/text-to-image/FLUX.1-dev "
        "--workload.batch_size 4"),
    (4, "--ulysses_degree 2 --ring_degree 2 workload:text-to-image --workload.model_id "
        "black-forest-labs/FLUX.1-dev --workload.base_dir run/diffusion/text-to-image/FLUX.1-dev "
        "--workload.batch_size 4"),
    (4, "workload:t2i --workload.model_id black-forest-labs/FLUX.1-dev --workload.base_dir "
        "run/diffusion/flux_optimized --workload.batch_size 100 --workload.height 512 "
        "--workload.width 512 --workload.inference_steps 28 --workload.guidance_scale 3.5 "
        "--ulysses_degree 2 --ring_degree 2 --use_torch_compile --use_fp8_t5_encoder "
        "--use_teacache"),
    (4, "workload:t2i --workload.model_id stabilityai/stable-diffusion-xl-base-1.0 "
        "--workload.base_dir run/diffusion/sdxl --workload.batch_size 50 --ulysses_degree 2 "
        "--ring_degree 2"),
]


def plan_for(argv: str, world_size: int = 1, device_type: str = "cuda", visible_gpus: int = 8):
    launch = Launch(world_size=world_size, local_world_size=1, device_type=device_type,
                    visible_gpus=visible_gpus)
    return make_plan(parse_cli(shlex.split(argv)), launch)


@pytest.mark.parametrize("nproc,argv", README_COMMANDS)
def test_reference_readme_commands_parse(nproc, argv):
    config = parse_cli(shlex.split(argv))
    assert isinstance(config.workload, TextToImage)
    assert config.workload.model_id.count("/") == 1


def test_first_reference_command_plans_the_ml_energy_directory():
    plan = plan_for(README_COMMANDS[0][1])
    assert plan.run_dir == Path("run/diffusion/text-to-image/FLUX.1-dev/"
                                "batch-4+size-1024x1024+steps-28+seed-48105+uly-1+ring-1+tc-False")
    assert (plan.inference_steps, plan.guidance_scale, plan.dtype) == (28, 3.5, "bfloat16")
    assert plan.benchmark_iters == 8 and plan.warmup_iters == 1


def test_second_reference_command_plans_four_gpus():
    plan = plan_for(README_COMMANDS[1][1], world_size=4)
    assert (plan.ulysses_degree, plan.ring_degree, plan.num_gpus) == (2, 2, 4)
    assert plan.run_dir.name.endswith("+uly-2+ring-2+tc-False")


def test_optimized_reference_command_plans_every_option():
    plan = plan_for(README_COMMANDS[2][1], world_size=4)
    assert plan.run_dir.name == ("batch-100+size-512x512+steps-28+seed-48105+uly-2+ring-2+tc-True"
                                 "+fp8t5-True+cache-teacache")
    assert plan.warmup_iters == 2 and plan.options.cache_threshold == 0.12


def test_sdxl_with_sequence_parallelism_is_impossible():
    with pytest.raises(ConfigError, match="UNet .*no sequence parallelism"):
        plan_for(README_COMMANDS[3][1], world_size=4)


def test_top_level_flags_are_accepted_after_the_subcommand():
    argv = ["workload:t2i", "--workload.batch_size", "3", "--ulysses_degree", "2",
            "--no_save_images", "--warmup_iters=0", "--use_torch_compile"]
    moved = normalize_argv(argv)
    assert moved[:5] == ["--ulysses_degree", "2", "--no_save_images", "--warmup_iters=0",
                         "--use_torch_compile"]
    config = parse_cli(argv)
    assert (config.ulysses_degree, config.save_images, config.warmup_iters,
            config.use_torch_compile, config.workload.batch_size) == (2, False, 0, True, 3)


def test_defaults_come_from_the_registry_and_overrides_name_the_directory():
    plan = plan_for("workload:t2i --workload.model_id PixArt-alpha/PixArt-Sigma-XL-2-1024-MS "
                    "--workload.guidance_scale 2 --workload.weights random --workload.seed 7")
    assert (plan.inference_steps, plan.height, plan.width) == (20, 1024, 1024)
    assert plan.run_dir.parent == Path("run/diffusion/text-to-image/PixArt-alpha/"
                                       "PixArt-Sigma-XL-2-1024-MS")
    assert plan.run_dir.name == ("batch-1+size-1024x1024+steps-20+seed-7+uly-1+ring-1+tc-False"
                                 "+guidance-2+weights-random")


def test_cpu_runs_default_to_float32_and_say_so():
    plan = plan_for("workload:t2i --workload.weights tiny", device_type="cpu")
    assert plan.dtype == "float32" and plan.run_dir.name.endswith("+weights-tiny+dtype-float32")
    assert plan.max_sequence_length == 16


def test_long_runs_measure_fewer_iterations():
    plan = plan_for("workload:t2i --workload.model_id Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers")
    assert (plan.inference_steps, plan.benchmark_iters, plan.dtype) == (50, 4, "float16")


BAD = [
    ("workload:t2i --workload.model_id nobody/nothing", 1, "unknown model id 'nobody/nothing'"),
    ("--ulysses_degree 2 workload:t2i", 1, "= 2 but 1 process"),
    ("--ulysses_degree 0 workload:t2i", 1, "--ulysses_degree must be at least 1"),
    ("--ring_degree 0 workload:t2i", 1, "--ring_degree must be at least 1"),
    ("workload:t2i --workload.batch_size 0", 1, "batch_size must be at least 1"),
    ("workload:t2i --workload.height 1000", 1, "multiple of 16"),
    ("workload:t2i --workload.width -16", 1, "positive multiple of 16"),
    ("workload:t2i --workload.inference_steps 0", 1, "inference_steps must be at least 1"),
    ("workload:t2i --use_teacache --workload.model_id PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
     1, "only for the FLUX family"),
    ("workload:t2i --use_fbcache --use_teacache", 1, "exclusive"),
    ("--ulysses_degree 5 workload:t2i", 5, "24 attention heads, not divisible by"),
    ("workload:t2v --workload.model_id black-forest-labs/FLUX.1-dev", 1,
     "is a text-to-image model"),
]


@pytest.mark.parametrize("argv,world,message", BAD)
def test_bad_input_is_one_clear_error(argv, world, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        plan_for(argv, world_size=world)


def test_ring_attention_needs_cuda():
    with pytest.raises(ConfigError, match="needs CUDA"):
        plan_for("--ring_degree 2 workload:t2i --workload.weights tiny", world_size=2,
                 device_type="cpu")


def test_more_processes_than_gpus():
    launch = Launch(world_size=4, local_world_size=4, device_type="cuda", visible_gpus=2)
    with pytest.raises(ConfigError, match="only 2 visible GPU"):
        make_plan(parse_cli(shlex.split("--ulysses_degree 4 workload:t2i")), launch)


def test_launch_facts_come_from_the_environment_once(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    launch = Launch.from_environment()
    assert (launch.world_size, launch.local_world_size, launch.hub_offline) == (4, 2, True)


def test_local_directory_needs_its_family(tmp_path):
    with pytest.raises(ConfigError, match="--workload.family"):
        plan_for(f"workload:t2i --workload.model_id {tmp_path}")
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline"}')
    # Random weights: the folder holds no components to load (pretrained would be refused).
    plan = plan_for(f"workload:t2i --workload.model_id {tmp_path} --workload.family flux "
                    "--workload.weights random")
    assert plan.spec.family_name == "flux" and plan.inference_steps == 28
    # Recorded under local/<folder>, never as a path: the toolkit reads <org>/<model>.
    assert plan.run_dir.parent == Path("run/diffusion/text-to-image/local") / tmp_path.name


def test_missing_weights_offline_suggest_random(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    launch = Launch(device_type="cuda", visible_gpus=1, hub_offline=True)
    with pytest.raises(ConfigError, match="--workload.weights random"):
        make_plan(parse_cli(["workload:t2i"]), launch)


def test_help_documents_every_field():
    import dataclasses
    import subprocess
    import sys

    top = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.benchmark", "--help"],
                         capture_output=True, text=True, check=True).stdout
    sub = subprocess.run([sys.executable, "-m", "mlenergy.diffusion.benchmark",
                          "workload:text-to-image", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for field in dataclasses.fields(BenchmarkConfig):
        if field.name != "workload":
            assert f"--{field.name}" in top
    for field in dataclasses.fields(TextToImage):
        assert f"--workload.{field.name}" in sub
    assert "workload:text-to-video" in top


def test_the_readme_documents_every_flag():
    import dataclasses

    from mlenergy.diffusion.inputs.config import BenchmarkConfig, TextToVideo

    readme = (REPO / "README.md").read_text()
    flags = [f"--{f.name}" for f in dataclasses.fields(BenchmarkConfig) if f.name != "workload"]
    flags += [f"--workload.{f.name}" for f in dataclasses.fields(TextToVideo)]
    # Booleans are documented by their on (or off) spelling.
    missing = [flag for flag in flags
               if f"`{flag}" not in readme and f"`{flag.replace('--', '--no_', 1)}" not in readme]
    assert not missing, f"README.md does not document {missing}"


@pytest.mark.parametrize("argv, world, refused", [
    ("--ulysses_degree 2 workload:t2i --workload.weights tiny --workload.height 16 "
     "--workload.width 64", 2,
     "--workload.height 16 gives 1 latent rows (16 pixels each), which xDiT cannot split among 2"),
    ("--ulysses_degree 2 workload:t2i --workload.weights tiny --workload.height 32 "
     "--workload.width 32", 2, None),
    # CogVideoX: 528 pixels are 66 latent rows of 8 (not 33 tokens of 16): 6 ranks split them.
    ("--ulysses_degree 6 workload:t2v --workload.weights random --workload.model_id "
     "zai-org/CogVideoX-2b --workload.height 528", 6, None),
    ("--ulysses_degree 6 workload:t2v --workload.weights random --workload.model_id "
     "zai-org/CogVideoX-2b --workload.height 496", 6,
     "--workload.height 496 gives 62 latent rows (8 pixels each), which xDiT cannot split "
     "among 6 sequence-parallel ranks; use a height that is a multiple of 48"),
])
def test_latent_rows_must_split_among_the_sequence_parallel_ranks(argv, world, refused):
    """xDiT refused these on every rank after loading (a traceback per rank, exit 1)."""
    if refused is None:
        assert plan_for(argv, world_size=world).height
        return
    with pytest.raises(ConfigError) as err:
        plan_for(argv, world_size=world)
    assert str(err.value).startswith(refused)


# The previous ML.ENERGY benchmark's job templates (configs/xdit/<task>/benchmark.yaml of
# ml-energy/benchmark), rendered for one point, without the launcher: they spell the degrees
# as workload flags, and leave steps and frames to the model with `None`.
PREDECESSOR_TEMPLATES = [
    (4, "workload:text-to-image --workload.model_id black-forest-labs/FLUX.1-dev "
        "--workload.base_dir run/diffusion/text-to-image/black-forest-labs/FLUX.1-dev "
        "--workload.batch_size 4 --workload.ulysses_degree 2 --workload.ring_degree 2 "
        "--workload.inference_steps None"),
    (2, "workload:text-to-video --workload.model_id Wan-AI/Wan2.1-T2V-1.3B-Diffusers "
        "--workload.base_dir run/diffusion/text-to-video/Wan-AI/Wan2.1-T2V-1.3B-Diffusers "
        "--workload.batch_size 1 --workload.ulysses_degree 1 --workload.ring_degree 2 "
        "--workload.inference_steps None --workload.num_frames None"),
]


@pytest.mark.parametrize("world,argv", PREDECESSOR_TEMPLATES)
def test_the_predecessors_job_templates_run_as_they_meant(world, argv):
    """`--workload.ulysses_degree` / `--workload.ring_degree` are our `--ulysses_degree` /
    `--ring_degree`: the same plan, the same run directory."""
    theirs = plan_for(argv, world_size=world)
    ours = plan_for(argv.replace("--workload.ulysses_degree", "--ulysses_degree")
                    .replace("--workload.ring_degree", "--ring_degree"), world_size=world)
    assert (theirs.ulysses_degree * theirs.ring_degree, theirs.run_dir) == (world, ours.run_dir)
    assert theirs == ours  # every resolved setting, the flags as given included


@pytest.mark.parametrize("argv", [
    "--ulysses_degree 2 workload:t2i --workload.ulysses_degree 2",
    "workload:t2i --workload.ring_degree=2 --ring_degree 2",
])
def test_both_spellings_of_a_degree_are_refused_in_one_line(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_cli(shlex.split(argv))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "one setting" in err[0], err


def test_the_help_shows_one_spelling_of_each_degree():
    import subprocess
    import sys

    helped = "".join(subprocess.run([sys.executable, "-m", "mlenergy.diffusion.benchmark", *sub,
                                     "--help"], cwd=REPO, capture_output=True, text=True,
                                    check=True).stdout for sub in ([], ["workload:t2i"]))
    assert "--ulysses_degree" in helped and "--ring_degree" in helped
    assert "--workload.ulysses_degree" not in helped and "--workload.ring_degree" not in helped
