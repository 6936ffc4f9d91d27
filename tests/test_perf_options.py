"""Issue 24's options: the FP8 denoiser leaves inductor's process-wide settings as it found them,
`--compile_autotune` (coordinate-descent tuning) is the one way to turn them on, the first call's
cost is reported beside dynamo's count, and `--attention_backend fa3` (FlashAttention-3 from the
fa3-fwd wheel) is refused in one line wherever it cannot run."""

from __future__ import annotations

import shlex

import pytest
import torch

from conftest import TINY_FLUX, run_benchmark
from test_quantize import run_fp8_worker
from mlenergy.diffusion.engine import options_apply
from mlenergy.diffusion.inputs.config import ConfigError, parse_cli
from mlenergy.diffusion.kernels import attention, quantize
from mlenergy.diffusion.kernels.quantize import Gpu
from mlenergy.diffusion.output import summary
from mlenergy.diffusion.planning.options import Options
from mlenergy.diffusion.planning.plan import make_plan
from mlenergy.diffusion.process.launch import Launch

H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0))
A100 = Gpu("NVIDIA A100-SXM4-80GB", (8, 0))
L40S = Gpu("NVIDIA L40S", (8, 9))


def plan_for(argv: str, world_size: int = 1, device_type: str = "cuda"):
    launch = Launch(world_size=world_size, local_world_size=world_size,
                    device_type=device_type, visible_gpus=8)
    return make_plan(parse_cli(shlex.split(argv)), launch)


# ---------------------------------------------------------------- FP8 and inductor's settings

def test_fp8_quantization_leaves_inductor_settings_as_it_found_them():
    # torchao 0.18.0 itself, beside the test environment (tests/test_quantize.py says why): its
    # default config changes inductor's settings process-wide; the benchmark's leaves them.
    found = run_fp8_worker("settings")
    assert found["before"]["coordinate_descent_tuning"] is False  # torch's default, as found
    assert found["after_benchmark_fp8"] == found["before"]
    assert found["fp8_linear_layers"] == 1 and found["set_inductor_config"] is False
    assert found["activation_value_lb"] == quantize.ACTIVATION_SCALE_FLOOR
    # The check above is a real one: torchao's default would have changed them.
    changed = found["after_torchao_default"]
    assert changed["coordinate_descent_tuning"] is True
    assert changed["coordinate_descent_check_all_directions"] is True


@pytest.fixture
def inductor_restored():
    from torch._inductor import config as inductor

    # Whatever a test changes in inductor's settings is undone after it.
    with inductor.patch({name: options_apply.inductor_settings()[name]
                         for name in options_apply.INDUCTOR_SETTINGS}):
        yield


def test_compile_autotune_is_the_one_way_to_turn_coordinate_descent_on(inductor_restored):
    before = options_apply.inductor_settings()
    assert options_apply.apply_inductor_settings(Options(use_torch_compile=True)) == {}
    assert options_apply.inductor_settings() == before
    tuned = Options(use_torch_compile=True, compile_autotune=True)
    assert options_apply.apply_inductor_settings(tuned) == options_apply.AUTOTUNE_SETTINGS
    after = options_apply.inductor_settings()
    assert after["coordinate_descent_tuning"] and after["coordinate_descent_check_all_directions"]
    assert {k: v for k, v in after.items() if k not in options_apply.AUTOTUNE_SETTINGS} == \
        {k: v for k, v in before.items() if k not in options_apply.AUTOTUNE_SETTINGS}


def test_compile_autotune_is_named_and_needs_inductor_compilation():
    plan = plan_for("--use_torch_compile --compile_scope blocks --compile_autotune "
                    "--quantize_denoiser fp8 workload:t2i --workload.weights random")
    assert plan.options.compile_autotune
    assert plan.run_dir.name.endswith("+compilescope-blocks+autotune-coordesc+quantdenoiser-fp8")
    assert "autotune" not in plan_for("--use_torch_compile workload:t2i").run_dir.name
    with pytest.raises(ConfigError, match="^--compile_autotune needs --use_torch_compile"):
        plan_for("--compile_autotune workload:t2i")
    with pytest.raises(ConfigError, match="tunes inductor's kernels.*not aot_eager"):
        plan_for("--use_torch_compile --compile_backend aot_eager --compile_autotune "
                 "workload:t2i")


def test_compile_overlap_is_named_set_alone_and_needs_inductor_and_collectives():
    from torch._inductor import config as inductor

    plan = plan_for("--ulysses_degree 2 --use_torch_compile --compile_scope blocks "
                    "--compile_overlap workload:t2i --workload.weights random", world_size=2)
    assert plan.options.compile_overlap
    assert plan.run_dir.name.endswith("+tc-True+weights-random+compilescope-blocks+overlap-on")
    before = options_apply.inductor_settings()
    with inductor.patch(before):  # undone after the test
        assert options_apply.apply_inductor_settings(plan.options) == \
            {"reorder_for_compute_comm_overlap": True}
        after = options_apply.inductor_settings()
    assert options_apply.inductor_settings() == before
    assert after["reorder_for_compute_comm_overlap"] is True
    assert {k: v for k, v in after.items() if k != "reorder_for_compute_comm_overlap"} == \
        {k: v for k, v in before.items() if k != "reorder_for_compute_comm_overlap"}
    for argv, world, message in [
        ("--compile_overlap workload:t2i", 1, "^--compile_overlap needs --use_torch_compile"),
        ("--ulysses_degree 2 --use_torch_compile --compile_backend aot_eager --compile_overlap "
         "workload:t2i", 2, "reorders inductor's kernels.*not aot_eager"),
        ("--use_torch_compile --compile_overlap workload:t2i", 1, "one process has none"),
    ]:
        with pytest.raises(ConfigError, match=message):
            plan_for(argv, world_size=world)


def test_compile_autotune_without_compiling_is_refused_by_the_cli(tmp_path):
    base = tmp_path / "out"
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base), "--compile_autotune"],
                         tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: --compile_autotune needs --use_torch_compile")
    assert not base.exists()


# ---------------------------------------------------------------- the first call's cost

def test_the_first_calls_overhead_is_measured_against_a_steady_warmup_iteration():
    # As on the H200 with torchao's settings: dynamo counted 4 s, the first call took 108 s.
    overhead = options_apply.first_call_overhead([108.0, 3.1, 2.95])
    assert overhead == {"steady_warmup_iteration_s": 2.95,
                        "first_call_overhead_s": pytest.approx(105.05)}
    assert options_apply.first_call_overhead([108.0]) == {
        "steady_warmup_iteration_s": None, "first_call_overhead_s": None}
    text = summary._first_call_text(108.0, 105.05)
    assert text == "; first call 108.0 s, 105.0 s over a steady one"


# ---------------------------------------------------------------- fa3

@pytest.mark.parametrize("device, gpus, version, ring, expected", [
    ("cpu", [], None, 1, ["has none", "fa3-fwd 0.0.3 wheel, which is not installed"]),
    ("cpu", [], "0.0.3", 1, ["has none"]),
    ("cuda", [H100], None, 1, ["fa3-fwd 0.0.3 wheel, which is not installed"]),
    ("cuda", [H100, A100], "0.0.3", 1, ["GPU 1 (NVIDIA A100-SXM4-80GB) has 8.0"]),
    ("cuda", [L40S], "0.0.3", 1, ["GPU 0 (NVIDIA L40S) has 8.9"]),
    ("cuda", [H100], "0.0.2", 1, ["but 0.0.2 is installed"]),
    ("cuda", [H100], "0.0.3", 2, ["not ring attention"]),
])
def test_fa3_is_refused_in_one_line_with_every_reason(device, gpus, version, ring, expected):
    reason = attention.fa3_refusal(device, gpus, version, ring_degree=ring)
    assert reason.startswith("--attention_backend fa3 ") and "\n" not in reason
    for part in expected:
        assert part in reason
    if len(expected) == 1:
        assert "it also" not in reason


def test_fa3_runs_on_hopper_with_the_pinned_wheel():
    assert attention.fa3_refusal("cuda", [H100, H100], "0.0.3") is None


def test_fa3_is_checked_against_this_machines_gpus_and_wheel(monkeypatch):
    monkeypatch.setattr(quantize, "visible_gpus", lambda: [H100])
    monkeypatch.setattr(attention, "installed_fa3", lambda: None)
    with pytest.raises(ConfigError, match="fa3-fwd 0.0.3 wheel, which is not installed"):
        plan_for("--attention_backend fa3 workload:t2i")
    monkeypatch.setattr(attention, "installed_fa3", lambda: "0.0.3")
    plan = plan_for("--attention_backend fa3 workload:t2i")
    assert plan.run_dir.name.endswith("+attn-fa3")
    assert options_apply.xfuser_backend_name(plan) == "FLASH_3"
    monkeypatch.setattr(quantize, "visible_gpus", lambda: [A100])
    with pytest.raises(ConfigError, match="Hopper GPUs only"):
        plan_for("--attention_backend fa3 workload:t2i")


def test_fa3_planned_for_gpus_elsewhere_is_refused_only_with_ring_attention():
    assert quantize.visible_gpus() == []
    plan_for("--attention_backend fa3 --ulysses_degree 2 workload:t2i", world_size=2)
    with pytest.raises(ConfigError, match="not ring attention"):
        plan_for("--attention_backend fa3 --ring_degree 2 workload:t2i", world_size=2)


def test_fa3_on_this_cpu_machine_without_the_wheel_is_refused_by_the_cli(tmp_path):
    assert not torch.cuda.is_available() and attention.installed_fa3() is None
    base = tmp_path / "out"
    proc = run_benchmark([*TINY_FLUX, "--workload.base_dir", str(base),
                          "--attention_backend", "fa3"], tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: --attention_backend fa3 needs a Hopper GPU")
    assert "fa3-fwd 0.0.3 wheel, which is not installed" in lines[0]
    assert not base.exists() and proc.stdout.strip() == ""


def test_the_fa3_self_check_accepts_the_kernel_and_rejects_a_wrong_one():
    def sdpa(q, k, v):  # (batch, tokens, heads, head dim), as flash_attn_func takes them
        out = torch.nn.functional.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        return out, None

    cpu = torch.device("cpu")
    assert attention.self_check(sdpa, cpu, tokens=64, head_dim=64) == 0.0
    with pytest.raises(RuntimeError, match="differs from torch SDPA"):
        attention.self_check(lambda q, k, v: torch.zeros_like(q), cpu, tokens=64, head_dim=64)


def test_the_attention_kernel_is_named():
    assert "fa3-fwd wheel" in attention.kernel_name("fa3", "diffusers:_flash_3")
    assert attention.kernel_name(None, "xfuser:CUDNN").startswith("cuDNN")
    assert attention.kernel_name(None, "diffusers:native").startswith("torch SDPA")


def test_flops_of_attention_through_fa3_are_counted():
    """On one process fa3 runs inside diffusers' FlashAttention-3 op, which FlopCounterMode
    cannot see into: without a formula the H200 run's MFU read 45% instead of about 56%."""
    import diffusers.models.attention_dispatch  # noqa: F401  (registers the op)
    from mlenergy.diffusion.probes import flops

    op = torch.ops._diffusers_flash_attn_3._flash_attn_forward
    formula = flops.attention_formulas()[op]
    shape = (1, 4608, 24, 128)  # FLUX.1-dev at 1024x1024: (batch, tokens, heads, head dim)
    assert formula(shape, shape, shape) == 4 * 24 * 4608 * 4608 * 128


@pytest.mark.parametrize("mode, marks", [("reduce-overhead", True), ("max-autotune", True),
                                         ("max-autotune-no-cudagraphs", False),
                                         ("default", False)])
def test_cuda_graph_modes_start_a_new_graph_step_at_every_denoiser_call(mode, marks):
    # CUDA-graph trees replay a recorded path only from a new step; the mark is what tells
    # them (torch.compiler.cudagraph_mark_step_begin), once per denoiser call, never per block.
    from torch._inductor.cudagraph_trees import MarkStepBox

    from test_quantize import _forward, _tiny_flux_transformer

    plan = plan_for(f"--use_torch_compile --compile_scope blocks --compile_mode {mode} "
                    "workload:t2i --workload.weights tiny")
    transformer = _tiny_flux_transformer()
    assert options_apply.mark_cudagraph_steps(plan, transformer) is marks
    before = MarkStepBox.mark_step_counter
    _forward(transformer)
    _forward(transformer)
    assert MarkStepBox.mark_step_counter == before - (2 if marks else 0)
