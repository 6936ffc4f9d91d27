"""What a plan decides before anything loads, checked key by key.

- Identity: for every key of a run's identity (and every key of its prompts), a change of
  settings that changes that very key; results of the unchanged configuration in the changed
  run's directory are then not "done" for it (`rundir.existing_run`: the test of done that the
  benchmark, the local sweep and the Slurm task share), while results of its own are. A key
  dropped from the identity fails here. Most fail the test of done itself; some keys cannot
  change alone, because another key always moves with them (family and task move the model or
  its text length; batch and iteration counts move the prompt count; the degrees move each
  other or the world size; switching compile or a step cache on moves its settings from None),
  and those fail by name.
- Memory under sequence parallelism: the activation floor is per rank, so a point too big for
  one GPU fits on several, by Ulysses and by ring alike, and each refusal names what it needs
  per rank (a simulated 141 GB GPU; on the CPU, through the sweep, host memory).
"""

from __future__ import annotations

import json
import re
import shutil
import types
from pathlib import Path

import pytest
import torch

from conftest import with_flags
from fakehub import SCHNELL_CONFIGS, add_snapshot
from mlenergy.diffusion.inputs.config import ConfigError, parse_cli
from mlenergy.diffusion.output import rundir
from mlenergy.diffusion.planning.plan import make_plan
from mlenergy.diffusion.process.launch import Launch
from mlenergy.diffusion.sweep import main as sweep_main

FLUX = "black-forest-labs/FLUX.1-dev"
IMAGE = ["workload:t2i", "--workload.weights", "tiny", "--workload.height", "64",
         "--workload.width", "64", "--workload.inference_steps", "2", "--benchmark_iters", "1"]
VIDEO = ["workload:t2v", "--workload.weights", "tiny"]
CPU = Launch(hub_offline=True)
CPU2 = Launch(world_size=2, local_world_size=2, hub_offline=True)
GPU = Launch.for_machine(1, "cuda")
GPU2 = Launch.for_machine(2, "cuda")
COMPILE = ["--use_torch_compile", "--compile_backend", "eager"]


def _local_model(folder: Path) -> Path:
    """FLUX.1-schnell's configs, with every component folder a pipeline needs (planning looks
    for them and for weight files, and reads no weights)."""
    for name, doc in SCHNELL_CONFIGS.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(doc))
    for slot, entry in SCHNELL_CONFIGS["model_index.json"].items():
        if slot.startswith("_") or not isinstance(entry, list):
            continue
        (folder / slot).mkdir(exist_ok=True)
        if not (folder / slot / "config.json").exists():
            (folder / slot / "config.json").write_text("{}")
        (folder / slot / "weights.safetensors").write_bytes(b"")
    return folder


def _reference_run(folder: Path) -> Path:
    """A finished run's directory, comparable with IMAGE's."""
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({
        "model_id": FLUX, "seed": 48105, "height": 64, "width": 64, "batch_size": 1,
        "inference_steps": 2, "iterations": [{"images": ["i0-0.png"], "prompts": ["a"]}]}))
    (folder / "requests.json").write_text("[]")
    return folder


def _cache_other_dataset(tmp_path: Path, monkeypatch) -> None:
    """someone/other-prompts (and the image dataset, for videos) in the prompt cache, as a run
    where the hub answered leaves them: offline, a dataset that is neither cached nor the task's
    own is refused while planning."""
    from mlenergy.diffusion.planning import prompt_datasets

    monkeypatch.setenv("MLENERGY_CACHE_DIR", str(tmp_path / "mlenergy-cache"))
    for dataset in ("someone/other-prompts", "data-is-better-together/open-image-preferences-v1"):
        cache = prompt_datasets.cache_file(dataset, task="text-to-image")
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps([f"a green sphere number {i}" for i in range(40)]))


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Local models, prompt files, a reference run and a hub cache the table points at."""
    from mlenergy.diffusion.planning import limits

    # Pretrained FLUX.1-schnell in float32 (48 GB) is planned for a host that could hold it:
    # what is compared here is the identity, not this machine's memory (test_limits, test_inputs).
    monkeypatch.setattr(limits, "host_available_bytes", lambda: 1 << 40)
    monkeypatch.setattr(limits, "_device_memory_bytes", lambda device_type: 1 << 40)
    _cache_other_dataset(tmp_path, monkeypatch)
    home = tmp_path / "hf"
    model = _local_model(tmp_path / "model-a" / "my-model")
    add_snapshot(home, "acme/tiny-flux", "a" * 40, model, refs=("main",))
    add_snapshot(home, "acme/tiny-flux", "b" * 40, model, refs=("v2",))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a red cube number {i}\n" for i in range(40)))
    shutil.copy(prompts, tmp_path / "same-prompts.txt")
    other = tmp_path / "other-prompts.txt"
    other.write_text(prompts.read_text().replace("red", "blue"))
    return types.SimpleNamespace(
        model_a=model, model_b=_local_model(tmp_path / "model-b" / "my-model"),
        prompts=prompts, same_prompts=tmp_path / "same-prompts.txt", other_prompts=other,
        reference=_reference_run(tmp_path / "reference"))


def _table(p) -> dict[str, tuple]:
    """key -> (base argv, flags changed from it, base launch, changed launch)."""
    local = ["workload:t2i", "--workload.model_id", str(p.model_a)]
    hub = ["workload:t2i", "--workload.model_id", "acme/tiny-flux"]
    prompts = [*IMAGE, "--workload.prompts_file", str(p.prompts)]
    some = ["workload:t2i", "--workload.model_id", "acme/some-model", "--workload.weights", "tiny"]
    return {
        "model_id": (IMAGE, ["--workload.model_id", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"]),
        "model_path": (local, ["--workload.model_id", str(p.model_b)]),
        "revision": (hub, ["--workload.revision", "v2"]),
        "variant": (local, ["--workload.variant", "fp16"]),
        "family": ([*some, "--workload.family", "flux"], ["--workload.family", "pixart-sigma"]),
        "scheduler_overrides": (VIDEO, ["--workload.flow_shift", "7"]),
        "task": (IMAGE, ["workload:t2v"]),
        "weights": (hub, ["--workload.weights", "random"]),
        "dtype": (IMAGE, ["--workload.dtype", "bfloat16"]),
        "batch_size": (IMAGE, ["--workload.batch_size", "2"]),
        "height": (IMAGE, ["--workload.height", "128"]),
        "width": (IMAGE, ["--workload.width", "128"]),
        "inference_steps": ([*IMAGE, "--warmup_steps", "2"], ["--workload.inference_steps", "3"]),
        "guidance_scale": (IMAGE, ["--workload.guidance_scale", "2.0"]),
        "seed": (IMAGE, ["--workload.seed", "7"]),
        "num_frames": (VIDEO, ["--workload.num_frames", "9"]),
        "fps": (VIDEO, ["--workload.fps", "8"]),
        "max_sequence_length": (IMAGE, ["--workload.weights", "random"]),
        "ulysses_degree": (IMAGE, ["--ulysses_degree", "2"], CPU, CPU2),
        "ring_degree": (IMAGE, ["--ring_degree", "2"], GPU, GPU2),
        "world_size": (IMAGE, ["--ulysses_degree", "2"], CPU, CPU2),
        "device_type": ([*IMAGE, "--workload.dtype", "float32"], [], CPU, GPU),
        "use_torch_compile": (IMAGE, COMPILE),
        "compile_mode": ([*IMAGE, "--use_torch_compile"],
                         ["--compile_mode", "max-autotune-no-cudagraphs"]),
        "compile_backend": ([*IMAGE, "--use_torch_compile"], ["--compile_backend", "aot_eager"]),
        "compile_scope": ([*IMAGE, *COMPILE], ["--compile_scope", "blocks"]),
        "compile_autotune": ([*IMAGE, "--use_torch_compile"], ["--compile_autotune"]),
        "compile_overlap": ([*IMAGE, "--use_torch_compile", "--ulysses_degree", "2"],
                            ["--compile_overlap"], CPU2, CPU2),
        "use_fp8_t5_encoder": (IMAGE, ["--use_fp8_t5_encoder"]),
        "fuse_qkv": (IMAGE, ["--fuse_qkv"]),
        "quantize_denoiser": (IMAGE, ["--quantize_denoiser", "fp8"], GPU, GPU),
        "enable_sequential_cpu_offload": (IMAGE, ["--enable_sequential_cpu_offload"], GPU, GPU),
        "use_teacache": (IMAGE, ["--use_teacache"]),
        "use_fbcache": (IMAGE, ["--use_fbcache"]),
        "cache_threshold": ([*IMAGE, "--use_fbcache"], ["--cache_threshold", "0.3"]),
        "attention_backend": (IMAGE, ["--attention_backend", "sdpa_math"]),
        "warmup_iters": (IMAGE, ["--warmup_iters", "2"]),
        "warmup_steps": (IMAGE, ["--warmup_steps", "1"]),
        "benchmark_iters": (IMAGE, ["--benchmark_iters", "3"]),
        "prompts": (IMAGE, ["--workload.prompts_file", str(p.prompts)]),
        "prompts.file": (prompts, ["--workload.prompts_file", str(p.same_prompts)]),
        "prompts.sha256": (prompts, ["--workload.prompts_file", str(p.other_prompts)]),
        "prompts.dataset": (IMAGE, ["--workload.prompt_dataset", "someone/other-prompts"]),
        "prompts.split": (IMAGE, ["--workload.prompt_dataset", "someone/other-prompts"]),
        "prompts.column": (VIDEO, ["--workload.prompt_dataset",
                                   "data-is-better-together/open-image-preferences-v1"]),
        "prompts.sampling": (IMAGE, ["--workload.prompt_sampling", "leaderboard"]),
        "prompts.count": (IMAGE, ["--benchmark_iters", "2"]),
        "count_flops": (IMAGE, ["--no_count_flops"]),
        "profile_steps": (IMAGE, ["--profile_steps", "3"], GPU, GPU),
        "save_images": (IMAGE, ["--no_save_images"]),
        "idle_baseline_s": (IMAGE, ["--idle_baseline_s", "1"]),
        "reference_run": (IMAGE, ["--reference_run", str(p.reference)]),
    }


def _plan(argv: list[str], launch: Launch):
    return make_plan(parse_cli(argv), launch)


def _value(identity: dict, key: str):
    head, _, sub = key.partition(".")
    return identity[head][sub] if sub else identity[head]


def _changed(base: list[str], flags: list[str]) -> list[str]:
    if flags and flags[0].startswith("workload:"):  # another task, the rest as it was
        return [flags[0], *base[1:], *flags[1:]]
    return with_flags(base, *flags)


def _results(run_dir: Path, identity: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps({
        "model_id": identity["model_id"], "batch_size": identity["batch_size"],
        "num_iterations": 1, "iterations": [{}],
        "total_time": 1.0, "run_identity": identity}))


def test_every_key_of_the_identity_tells_two_configurations_apart(places, tmp_path):
    table = _table(places)
    identity = rundir.identity(_plan(IMAGE, CPU))
    keys = set(identity) | {f"prompts.{k}" for k in identity["prompts"]}
    # Every key is in the table (a new one must be added with its change), and the prompts'
    # keys of a file too.
    file_keys = {f"prompts.{k}" for k in rundir.identity(_plan(
        [*IMAGE, "--workload.prompts_file", str(places.prompts)], CPU))["prompts"]}
    assert keys | file_keys == set(table), (keys | file_keys) ^ set(table)
    for n, (key, (base_argv, flags, *launches)) in enumerate(table.items()):
        base_launch, changed_launch = (launches + [CPU, CPU])[:2] if launches else (CPU, CPU)
        base = rundir.identity(_plan(base_argv, base_launch))
        plan = _plan(_changed(base_argv, flags), changed_launch)
        changed = rundir.identity(plan)
        assert _value(changed, key) != _value(base, key), key
        # The unchanged configuration's results are not this one's, wherever they lie.
        run_dir = tmp_path / "runs" / str(n) / plan.run_dir.name
        _results(run_dir, base)
        assert rundir.existing_run(_moved(plan, run_dir)).state == "other", key
        _results(run_dir, changed)
        assert rundir.existing_run(_moved(plan, run_dir)).state == "done", key


def _moved(plan, run_dir: Path):
    """`plan` with its run directory at `run_dir` (the identity is the plan's own)."""
    import dataclasses

    return dataclasses.replace(plan, run_dir=run_dir)


# ------------------------------------------------------------- memory under sequence parallelism

WAN_14B = ["workload:t2v", "--workload.model_id", "Wan-AI/Wan2.1-T2V-14B-Diffusers",
           "--workload.weights", "random", "--workload.height", "720", "--workload.width",
           "1280", "--workload.num_frames", "81", "--workload.batch_size", "128"]
NEEDS = re.compile(r"needs at least ([\d,.]+) GB of activations \((.*)\), more than the "
                   r"([\d,.]+) GB of (each GPU|host memory)")


def _gb(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.fixture
def h200(monkeypatch):
    """This process sees one 141 GB GPU, as a planning sweep on an H200 node would."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda index=0: types.SimpleNamespace(total_memory=141 * 10**9,
                                                              name="simulated H200"))


def _refusal(ulysses: int, ring: int) -> str | None:
    argv = [*WAN_14B, "--ulysses_degree", str(ulysses), "--ring_degree", str(ring)]
    try:
        make_plan(parse_cli(argv), Launch.for_machine(ulysses * ring, "cuda"))
    except ConfigError as err:
        return str(err)
    return None


def test_a_point_too_big_for_one_gpu_fits_on_several_by_ulysses_and_by_ring(h200):
    one = NEEDS.search(_refusal(1, 1) or "")
    assert one and "in the denoiser" in one.group(2) and one.group(4) == "each GPU", one
    assert _gb(one.group(3)) == 141.0
    for degrees in ((2, 1), (1, 2)):
        half = NEEDS.search(_refusal(*degrees) or "")
        assert half, degrees  # half of it per rank is still too much
        assert _gb(half.group(1)) == pytest.approx(_gb(one.group(1)) / 2, abs=0.1), degrees
    for degrees in ((4, 1), (2, 2), (1, 4), (8, 1)):
        assert _refusal(*degrees) is None, degrees


def _skipped(stdout: str) -> dict[int, str]:
    """Ulysses degree -> the reason the dry run gives for skipping the huge points."""
    found = re.findall(r"^# skipped: .* ulysses (\d+) x ring 1 \[--workload.num_frames 2049 .*\]: "
                       r"(.*)$", stdout, re.M)
    return {int(u): reason for u, reason in found}


def test_the_sweep_reports_each_ranks_share_of_the_activations(h200, capsys, tmp_path):
    # 2,049 frames at 720p are far beyond any host's memory, per rank too; 9 at 64x64 fit.
    huge, small = "--workload.num_frames 2049 --workload.height 720 --workload.width 1280", \
        "--workload.num_frames 9 --workload.height 64 --workload.width 64"
    code = sweep_main(["--task", "text-to-video", "--models", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                       "--batch_sizes", "1024", "--parallel", "1x1", "2x1", "4x1",
                       f"--options={huge}", f"--options={small}", "--device", "cuda", "--gpus",
                       "4", "--dry_run", "--out_dir", str(tmp_path / "run"), "--",
                       "--workload.weights", "random"])
    out = capsys.readouterr().out
    assert code == 0, out
    reasons = _skipped(out)
    assert sorted(reasons) == [1, 2, 4], out
    needs = {u: NEEDS.search(reason) for u, reason in reasons.items()}
    assert all(needs.values()), reasons
    assert {m.group(4) for m in needs.values()} == {"each GPU"}
    # Half per rank on two; on four, decoding (whole on the decoding rank) is the larger floor.
    assert "in the denoiser" in needs[1].group(2) and "in the denoiser" in needs[2].group(2)
    assert _gb(needs[2].group(1)) == pytest.approx(_gb(needs[1].group(1)) / 2, rel=1e-3)
    assert needs[4].group(2).startswith("decoding")
    assert _gb(needs[4].group(1)) < _gb(needs[2].group(1))
    # The 9-frame points are planned to run, one to four processes.
    assert out.count("--workload.num_frames 9 --workload.height 64") == 3
