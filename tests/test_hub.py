"""Real Hugging Face models, the way their users load them: hub ids of any known family, aliases
and local directories recorded as typed, revisions and variants, the local cache, gated and
missing repositories, and model_info.json.

There is no hub here, so the hub's two sides are stood in for by their real formats: tiny
pipelines written by `save_pretrained` into a cache laid out as huggingface_hub lays it out
(`models--org--name/snapshots/<commit>/`, `refs/<branch>`), and a local HTTP endpoint that
refuses repositories the way the hub does, so that huggingface_hub raises its own errors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import load_results, only_run_dir, run_benchmark
from fakehub import (
    FLUX_DEV,
    SCHNELL,
    SCHNELL_CONFIGS,
    RefusingHub,
    add_snapshot,
    save_tiny_flux,
)
from mlenergy.diffusion.inputs.config import ConfigError, parse_cli
from mlenergy.diffusion.models import pipelines, resolve
from mlenergy.diffusion.models.registry import MODELS
from mlenergy.diffusion.output import model_info
from mlenergy.diffusion.planning.plan import default_base_dir, make_plan

REPO_ID = "acme/tiny-flux"
MAIN, V2 = "a" * 40, "b" * 40
TINY_SIZE = ["--workload.height", "64", "--workload.width", "64",
             "--workload.inference_steps", "2", "--benchmark_iters", "1"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Two revisions of a tiny FLUX pipeline, each with main and fp16-variant weights whose
    transformer output bias is shifted by a different amount: main 0 / fp16 2 on `main`, 1 / 3
    on `v2`."""
    root = tmp_path_factory.mktemp("saved")
    for name, (plain, fp16) in {"main": (0.0, 2.0), "v2": (1.0, 3.0)}.items():
        save_tiny_flux(root / name, plain)
        save_tiny_flux(root / name, fp16, variant="fp16")
    reference = pipelines.build_pipeline(MODELS[FLUX_DEV], "tiny", dtype=torch.float32,
                                         device="cpu", max_sequence_length=16)
    return root, reference.transformer.proj_out.bias.detach().clone()


@pytest.fixture
def hf_home(tmp_path, saved, monkeypatch):
    """HF_HOME with acme/tiny-flux cached at `main` and `v2`; the hub unreachable."""
    root, _ = saved
    home = tmp_path / "hf"
    add_snapshot(home, REPO_ID, MAIN, root / "main", refs=("main",))
    add_snapshot(home, REPO_ID, V2, root / "v2", refs=("v2",))
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return home


def plan(argv: str | list[str], **launch):
    import os

    from mlenergy.diffusion.process.launch import Launch

    # As a launch reads it: offline when the test's environment says so.
    launch = Launch(**{"world_size": 1, "device_type": "cpu", "visible_gpus": 0,
                       "hub_offline": os.environ.get("HF_HUB_OFFLINE") == "1", **launch})
    return make_plan(parse_cli(argv.split() if isinstance(argv, str) else argv), launch)


def test_a_cached_hub_pipeline_loads_at_its_revision_and_with_its_variant(hf_home, saved):
    _, bias = saved
    p = plan(f"workload:t2i --workload.model_id {REPO_ID} --workload.revision v2 "
             "--workload.variant fp16")
    # The family comes from the cached model_index.json; the id is recorded as typed.
    assert (p.spec.family_name, p.spec.model_id, p.spec.revision) == ("flux", REPO_ID, "v2")
    assert p.run_dir.name.endswith("+rev-v2+variant-fp16")
    assert p.run_dir.parent == Path("run/diffusion/text-to-image") / REPO_ID
    loaded = pipelines.build_pipeline(p.spec, "pretrained", dtype=torch.float32, device="cpu",
                                      max_sequence_length=16)
    assert torch.allclose(loaded.transformer.proj_out.bias, bias + 3.0)
    main = plan(f"workload:t2i --workload.model_id {REPO_ID}")
    loaded = pipelines.build_pipeline(main.spec, "pretrained", dtype=torch.float32,
                                      device="cpu", max_sequence_length=16)
    assert torch.allclose(loaded.transformer.proj_out.bias, bias)
    assert not main.run_dir.name.endswith(("+rev-v2", "variant-fp16"))


def _pixels(run_dir: Path) -> dict:
    return {p.name: np.asarray(Image.open(p), dtype=np.int16)
            for p in sorted((run_dir / "image_outputs").iterdir())}


def test_the_benchmark_runs_a_cached_hub_revision_and_variant_on_one_and_two_processes(
        tmp_path, hf_home):
    """Rank 0 verifies the snapshot while the other waits at a barrier; both load from the
    cache; Ulysses 2 gives the images of one process."""
    args = ["workload:t2i", "--workload.model_id", REPO_ID, "--workload.revision", "v2",
            "--workload.variant", "fp16", *TINY_SIZE]
    one = run_benchmark([*args, "--workload.base_dir", str(tmp_path / "one")], tmp_path,
                        HF_HOME=str(hf_home))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_benchmark(["--ulysses_degree", "2", *args, "--workload.base_dir",
                         str(tmp_path / "two")], tmp_path, nproc=2, HF_HOME=str(hf_home))
    assert two.returncode == 0, two.stderr[-3000:]
    run_one, run_two = only_run_dir(tmp_path / "one"), only_run_dir(tmp_path / "two")
    assert run_one.name.endswith("+tc-False+dtype-float32+rev-v2+variant-fp16")
    doc = load_results(run_one)
    assert doc["model_id"] == REPO_ID and doc["weights"] == "pretrained"
    assert doc["model_source"] == {"kind": "hub", "id": REPO_ID, "revision": "v2",
                                   "variant": "fp16"}
    assert doc["model_defaults"]["transformer"] == "checkpoint"
    assert doc["model_defaults"]["steps"] == f"the flux family ({FLUX_DEV})"
    one_px, two_px = _pixels(run_one), _pixels(run_two)
    assert one_px.keys() == two_px.keys() and one_px
    for name in one_px:
        assert np.abs(one_px[name] - two_px[name]).max() <= 1, name
    # The checkpoint's own transformer config gives the parameter count.
    info = json.loads((tmp_path / "one" / "model_info.json").read_text())
    config = json.loads((hf_home / "hub" / "models--acme--tiny-flux" / "snapshots" / V2 /
                         "transformer" / "config.json").read_text())
    assert info["model_id"] == REPO_ID and info["total_parameters_billion"] == round(
        pipelines.denoiser_parameters_of(MODELS[FLUX_DEV].family, {"transformer": {
            k: v for k, v in config.items() if not k.startswith("_")}}) / 1e9, 3)


def test_flux_schnell_takes_its_cached_configs_else_the_familys_with_a_line(tmp_path,
                                                                             monkeypatch):
    home = tmp_path / "hf"
    add_snapshot(home, SCHNELL, "c" * 40, files=SCHNELL_CONFIGS)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = f"workload:t2i --workload.model_id {SCHNELL} --workload.weights tiny"
    spec = plan(argv).spec
    # No --workload.family needed: the cached model_index.json names FluxPipeline.
    assert spec.family_name == "flux" and spec.model_id == SCHNELL
    scheduler = pipelines.build_pipeline(spec, "tiny", dtype=torch.float32, device="cpu",
                                         max_sequence_length=16).scheduler
    assert scheduler.config.shift == 1.0 and not scheduler.config.use_dynamic_shifting
    assert not spec.architecture["transformer"]["guidance_embeds"]
    assert (spec.height, spec.width) == (1024, 1024)  # the family's: FLUX has no sample size
    assert spec.defaults_source["scheduler"] == "checkpoint"

    args = ["workload:t2i", "--workload.model_id", SCHNELL, "--workload.family", "flux",
            "--workload.weights", "tiny", *TINY_SIZE]
    cached = run_benchmark([*args, "--workload.base_dir", str(tmp_path / "cached")], tmp_path,
                           HF_HOME=str(home))
    assert cached.returncode == 0, cached.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "cached")
    doc = load_results(run_dir)
    assert doc["model_id"] == SCHNELL
    assert doc["model_defaults"]["scheduler"] == doc["model_defaults"]["transformer"] == \
        "checkpoint"
    log = (run_dir / "driver_log.txt").read_text()
    assert "transformer, vae, scheduler from its own configs" in log
    # The count of schnell's own transformer config: FLUX.1-dev's architecture without the
    # guidance embedding (11.901 B for FLUX.1-dev).
    info = json.loads((tmp_path / "cached" / "model_info.json").read_text())
    assert (info["model_id"], info["total_parameters_billion"]) == (SCHNELL, 11.891)

    empty = tmp_path / "empty-hf"
    empty.mkdir()
    bare = run_benchmark([*args, "--workload.base_dir", str(tmp_path / "bare")], tmp_path,
                         HF_HOME=str(empty))
    assert bare.returncode == 0, bare.stderr[-3000:]
    log = (only_run_dir(tmp_path / "bare") / "driver_log.txt").read_text()
    assert ("none of its configs are at hand (not in the local Hugging Face cache), so every "
            f"default is from the flux family ({FLUX_DEV})") in log
    # Its real architecture is unknown: no model_info.json, and the log says why.
    assert not (tmp_path / "bare" / "model_info.json").exists()
    assert "model_info.json not written" in log


BAD = [
    ("workload:t2i --workload.model_id nobody/nothing --workload.weights tiny",
     "unknown model id 'nobody/nothing'"),
    ("workload:t2i --workload.model_id ./no/such/dir/x", "neither a registered model"),
    (f"workload:t2i --workload.model_id {SCHNELL} --workload.family sana --workload.weights tiny",
     "names FluxPipeline (the flux family), not sana"),
    ("workload:t2i --workload.model_name just-a-name --workload.weights tiny", "must be ORG/NAME"),
    ("workload:t2i --workload.variant fp16 --workload.weights random", "needs --workload.weights"),
    ("workload:t2i --workload.revision v2 --workload.weights random", "has no effect"),
    ("workload:t2i --workload.flow_shift 5 --workload.weights tiny", "no fixed flow shift"),
    ("workload:t2i --workload.model_id stabilityai/stable-diffusion-3.5-large "
     "--workload.flow_shift 0 --workload.weights tiny", "must be above 0"),
    ("workload:t2v --workload.model_id Wan-AI/Wan2.1-T2V-1.3B-Diffusers --workload.weights tiny "
     "--workload.family flux", "is a wan model, not flux"),
]


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_model_input_is_one_clear_error(argv, message, tmp_path, monkeypatch):
    home = tmp_path / "hf"
    add_snapshot(home, SCHNELL, "c" * 40, files=SCHNELL_CONFIGS)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        plan(argv)
    assert "\n" not in str(err.value)


REFUSALS = {
    "acme/gated": (401, "GatedRepo"),
    "acme/missing": (401, "RepoNotFound"),
    "acme/norevision": (404, "RevisionNotFound"),
    "acme/notdiffusers": (404, "EntryNotFound"),
}


@pytest.mark.parametrize("model_id,extra,message", [
    ("acme/gated", "--workload.family flux", "acme/gated is gated: accept its terms on "
     "https://huggingface.co/acme/gated, then log in with `hf auth login` or set HF_TOKEN"),
    ("acme/missing", "--workload.family flux", "acme/missing was not found on the Hugging Face "
     "hub"),
    ("acme/norevision", "--workload.family flux --workload.revision nope",
     "acme/norevision has no revision 'nope'"),
    ("acme/notdiffusers", "--workload.family flux", "has no model_index.json, so it is not a "
     "diffusers pipeline"),
    # A registered id goes through the same check (FLUX.1-dev is gated on the real hub too).
    (FLUX_DEV, "", "is gated"),
])
def test_gated_missing_and_unusable_repositories_fail_in_one_line_before_loading(
        model_id, extra, message, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads HF_HUB_OFFLINE once, when it is first imported, and the suite
    # starts offline (conftest): this process must go online the way a fresh one would.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    with RefusingHub({**REFUSALS, FLUX_DEV: (401, "GatedRepo")}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        with pytest.raises(ConfigError) as err:
            plan(f"workload:t2i --workload.model_id {model_id} {extra}")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_gated_repository_ends_the_benchmark_with_one_line_and_no_results(tmp_path):
    with RefusingHub(REFUSALS) as hub:
        proc = run_benchmark(["workload:t2i", "--workload.model_id", "acme/gated",
                              "--workload.family", "flux", "--workload.base_dir",
                              str(tmp_path / "out")], tmp_path, HF_ENDPOINT=hub.url,
                             HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: acme/gated is gated"), proc.stderr
    assert "--workload.weights random" in lines[0]
    assert not (tmp_path / "out").exists()


def test_offline_without_the_weights_says_how_to_download_them(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError) as err:
        plan("workload:t2v --workload.model_id tencent/HunyuanVideo")
    text = str(err.value)
    assert "HF_HUB_OFFLINE is set" in text and str(tmp_path / "hf" / "hub") in text
    # The registry's diffusers-format revision of tencent/HunyuanVideo is asked for.
    assert "`hf download tencent/HunyuanVideo --revision refs/pr/18`" in text


def test_aliases_are_recorded_as_typed_with_the_registry_defaults(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    old = plan("workload:t2v --workload.model_id THUDM/CogVideoX-2b --workload.weights tiny "
               "--workload.num_frames 9")
    new = plan("workload:t2v --workload.model_id zai-org/CogVideoX-2b --workload.weights tiny "
               "--workload.num_frames 9")
    assert old.spec.model_id == "THUDM/CogVideoX-2b" and new.spec.model_id == "zai-org/CogVideoX-2b"
    assert old.base_dir == Path("run/diffusion/text-to-video/THUDM/CogVideoX-2b")
    assert (old.inference_steps, old.height, old.width) == (new.inference_steps, new.height,
                                                             new.width) == (50, 480, 720)
    assert old.spec.defaults_source["steps"] == "registry (zai-org/CogVideoX-2b)"
    # tencent/HunyuanVideo loads its diffusers branch by default, unmarked; the community copy
    # has its diffusers pipeline on main; any other revision is marked in the run directory.
    tencent = plan("workload:t2v --workload.model_id tencent/HunyuanVideo --workload.weights "
                   "tiny")
    assert tencent.spec.revision == "refs/pr/18" and "+rev-" not in tencent.run_dir.name
    community = resolve.resolve_spec(parse_cli(
        ["workload:t2v", "--workload.model_id", "hunyuanvideo-community/HunyuanVideo"]).workload)
    assert community.revision is None and community.model_id == "hunyuanvideo-community/HunyuanVideo"
    pinned = resolve.resolve_spec(parse_cli(
        ["workload:t2v", "--workload.model_id", "tencent/HunyuanVideo", "--workload.revision",
         "0123456789abcdef0123456789abcdef01234567"]).workload)
    assert resolve.run_dir_tokens(pinned) == ["rev-0123456789ab"]


def test_flow_shift_replaces_the_schedulers_and_marks_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    p = plan("workload:t2v --workload.model_id Wan-AI/Wan2.1-T2V-1.3B-Diffusers "
             "--workload.weights tiny --workload.flow_shift 12 --workload.num_frames 9")
    assert p.run_dir.name.endswith("+flowshift-12") and p.spec.scheduler_overrides == {
        "flow_shift": 12.0}
    shifted = pipelines.build_pipeline(p.spec, "tiny", dtype=torch.float32, device="cpu",
                                       max_sequence_length=16).scheduler
    assert shifted.config.flow_shift == 12.0 and shifted.config["flow_shift"] == 12.0
    plain = pipelines.build_pipeline(MODELS["Wan-AI/Wan2.1-T2V-1.3B-Diffusers"], "tiny",
                                     dtype=torch.float32, device="cpu",
                                     max_sequence_length=16).scheduler
    shifted.set_timesteps(10)
    plain.set_timesteps(10)
    assert plain.config.flow_shift == 3.0 and shifted.sigmas[1] > plain.sigmas[1]


def test_model_info_describes_the_real_architecture_and_is_never_clobbered(tmp_path):
    spec = MODELS[FLUX_DEV]
    doc = model_info.model_info_document(spec, "bfloat16")
    assert (doc["total_parameters_billion"], doc["nickname"]) == (11.901, "FLUX.1 [dev]")
    base = tmp_path / "base"
    write, why = model_info.should_write_model_info(base, doc, "tiny")
    assert write  # nothing there yet, no other runs
    (base / "run-a").mkdir(parents=True)
    (base / "run-a" / "results.json").write_text(json.dumps(
        {"model_id": "org/model", "batch_size": 1, "weights": "random"}))
    write, why = model_info.should_write_model_info(base, doc, "tiny")
    assert not write and "holds runs of other weights" in why
    (base / "model_info.json").write_text(json.dumps(
        {"model_id": FLUX_DEV, "total_parameters_billion": 0.0, "weights": "tiny"}))
    assert model_info.should_write_model_info(base, doc, "random")[0]  # the old tiny-run count
    (base / "model_info.json").write_text(json.dumps(
        {"nickname": "FLUX.1 Dev", "total_parameters_billion": 12, "weight_precision": "bfloat16"}))
    write, why = model_info.should_write_model_info(base, doc, "random")
    assert not write and "kept" in why
    unknown = resolve.resolve_spec(parse_cli(["workload:t2i", "--workload.model_id", "acme/x",
                                              "--workload.family", "flux", "--workload.weights",
                                              "tiny"]).workload)
    assert model_info.model_info_document(unknown, "bfloat16") is None


def test_model_info_of_a_real_campaign_survives_a_tiny_run(tmp_path):
    base = tmp_path / "run" / "diffusion" / "text-to-image" / FLUX_DEV
    curated = {"nickname": "FLUX.1 Dev", "total_parameters_billion": 12,
               "weight_precision": "bfloat16"}
    base.mkdir(parents=True)
    (base / "model_info.json").write_text(json.dumps(curated))
    before = (base / "model_info.json").read_bytes()
    proc = run_benchmark(["workload:t2i", "--workload.weights", "tiny", "--workload.base_dir",
                          str(base), *TINY_SIZE], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (base / "model_info.json").read_bytes() == before
    log = (only_run_dir(base) / "driver_log.txt").read_text()
    assert f"{base / 'model_info.json'} kept" in log


def _lend_energy(results: Path) -> None:
    """CPU runs measure no energy, and the toolkit drops runs without it: lend a run the
    iteration energies of the real H100 run in the fixtures (only the layout and ids are
    under test here)."""
    fixture = next((Path(__file__).parent / "fixtures" / "h100").rglob("results.json"))
    doc = json.loads(results.read_text())
    doc["iteration_energy_measurements"] = json.loads(fixture.read_text())[
        "iteration_energy_measurements"]
    results.write_text(json.dumps(doc))


def test_alias_and_local_directory_runs_load_in_the_toolkit_under_the_id_typed(
        tmp_path, saved):
    import mlenergy.data.records.runs as runs_module

    root_saved, _ = saved
    local = tmp_path / "models" / "my-flux"
    shutil.copytree(root_saved / "main", local)
    run_root = tmp_path / "run"
    runs = [
        ("text-to-image", str(local), ["--workload.weights", "pretrained", *TINY_SIZE]),
        ("text-to-video", "THUDM/CogVideoX-2b", ["--workload.weights", "tiny",
                                                 "--workload.num_frames", "9",
                                                 "--workload.height", "64", "--workload.width",
                                                 "64", "--workload.inference_steps", "2",
                                                 "--benchmark_iters", "1"]),
    ]
    for task, typed, extra in runs:
        base = default_base_dir(task, typed, run_root)
        proc = run_benchmark([f"workload:{task}", "--workload.model_id", typed,
                              "--workload.base_dir", str(base), *extra], tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        _lend_energy(only_run_dir(base) / "results.json")
    local_base = run_root / "diffusion" / "text-to-image" / "local" / "my-flux"
    doc = load_results(only_run_dir(local_base))
    assert doc["model_id"] == "local/my-flux" and doc["model_source"]["id"] == "my-flux"
    assert str(tmp_path) not in json.dumps({k: doc[k] for k in ("model_id", "model_source")})

    toolkit = tmp_path / "results"
    (toolkit / "diffusion" / "cpu" / "current").mkdir(parents=True)
    (toolkit / "diffusion" / "cpu" / "current" / "run").symlink_to(run_root)
    config_dir = tmp_path / "configs"
    for info in (run_root / "diffusion").rglob("model_info.json"):
        target = config_dir / info.parent.relative_to(run_root / "diffusion")
        target.mkdir(parents=True)
        shutil.copy(info, target)
    df = runs_module.DiffusionRuns.from_raw_results(toolkit, config_dir=config_dir).to_dataframe()
    rows = {row["model_id"]: row for _, row in df.iterrows()}
    assert set(rows) == {"local/my-flux", "THUDM/CogVideoX-2b"}
    assert rows["THUDM/CogVideoX-2b"]["total_params_billions"] == pytest.approx(1.694)
    assert rows["local/my-flux"]["total_params_billions"] == json.loads(
        (local_base / "model_info.json").read_text())["total_parameters_billion"]


def test_a_local_directory_can_be_named_and_loads_its_variant(tmp_path, saved):
    root_saved, bias = saved
    local = tmp_path / "weights" / "flux copy"
    shutil.copytree(root_saved / "main", local)
    named = plan(["workload:t2i", "--workload.model_id", str(local),
                  "--workload.model_name", "acme/flux-copy"])
    assert named.spec.model_id == "acme/flux-copy" and named.spec.load_id == str(local)
    assert named.base_dir == Path("run/diffusion/text-to-image/acme/flux-copy")
    unnamed = plan(["workload:t2i", "--workload.model_id", str(local)])
    assert unnamed.spec.model_id == "local/flux-copy"
    assert unnamed.base_dir == Path("run/diffusion/text-to-image/local/flux-copy")
    fp16 = plan(["workload:t2i", "--workload.model_id", str(local), "--workload.variant", "fp16"])
    assert fp16.spec.family_name == "flux" and fp16.run_dir.name.endswith("+variant-fp16")
    loaded = pipelines.build_pipeline(fp16.spec, "pretrained", dtype=torch.float32, device="cpu",
                                      max_sequence_length=16)
    assert torch.allclose(loaded.transformer.proj_out.bias, bias + 2.0)
