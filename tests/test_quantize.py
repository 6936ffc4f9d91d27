"""FP8 of the denoiser (refused in one line where it cannot run; weight bytes accounted through
torchao's float8 tensors) and fused QKV projections."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO

from mlenergy.diffusion.engine import options_apply as options
from mlenergy.diffusion.kernels import quantize
from mlenergy.diffusion.kernels.quantize import Gpu, fp8_refusal

H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0))


@pytest.mark.parametrize("device, dtype, gpus, torchao, expected", [
    ("cpu", "bfloat16", [], "0.18.0", "this run has no GPU"),
    ("cuda", "bfloat16", [H100, Gpu("NVIDIA A100-SXM4-80GB", (8, 0))], "0.18.0",
     "GPU 1 (NVIDIA A100-SXM4-80GB) has 8.0"),
    ("cuda", "float16", [H100], "0.18.0", "this run uses float16"),
    ("cuda", "bfloat16", [H100], None, "needs torchao 0.18.0, which is not installed"),
    ("cuda", "bfloat16", [H100], "0.15.0", "but 0.15.0 is installed"),
])
def test_fp8_is_refused_in_one_line_that_says_why(device, dtype, gpus, torchao, expected):
    reason = fp8_refusal(device, dtype, gpus, torchao)
    assert reason is not None and expected in reason and "\n" not in reason
    assert reason.startswith("--quantize_denoiser fp8 ")


def test_fp8_is_allowed_on_ada_hopper_and_blackwell_with_the_pinned_torchao():
    for capability in [(8, 9), (9, 0), (10, 0)]:
        assert fp8_refusal("cuda", "bfloat16", [Gpu("gpu", capability)], "0.18.0") is None


def test_this_cpu_machine_is_refused_before_anything_loads():
    assert not torch.cuda.is_available()
    assert quantize.visible_gpus() == []
    assert "this run has no GPU" in quantize.check_fp8("cpu", "bfloat16")


def test_fp8_summary_counts_the_bytes_inside_weight_subclasses():
    # torchao's float8 weights are tensor subclasses that report bfloat16 but hold a float8
    # payload (and scales) listed by __tensor_flatten__; torch's own TwoTensor has the same
    # protocol and runs without torchao (which diffusers imports noisily wherever it is
    # installed). On torchao 0.18.0 itself, Float8Tensor.from_hp of a 128x64 bf16 weight with
    # PerRow counts 8,704 bytes: 8,192 of float8 and 128 float32 scales (checked by hand).
    from torch.testing._internal.two_tensor import TwoTensor

    model = torch.nn.Sequential(torch.nn.Linear(64, 128, dtype=torch.bfloat16),
                                torch.nn.Linear(128, 8, dtype=torch.bfloat16))
    before = options.module_bytes(model)
    payload = model[0].weight.detach().to(torch.float8_e4m3fn)
    model[0].weight = torch.nn.Parameter(TwoTensor(payload, payload.clone()),
                                         requires_grad=False)
    summary = quantize.fp8_summary(model, before, seconds=0.5)
    assert summary["linear_layers"] == 2 and summary["fp8_linear_layers"] == 1
    assert summary["bf16_linear_layers"] == ["1"]
    untouched = 128 * 2 + 128 * 8 * 2 + 8 * 2  # first bias, second weight and bias
    assert summary["bytes_before"] == 64 * 128 * 2 + untouched
    assert summary["bytes_after"] == 2 * 64 * 128 + untouched


def _tiny_flux_transformer():
    from mlenergy.diffusion.models import pipelines
    from mlenergy.diffusion.models.registry import MODELS

    spec = MODELS["black-forest-labs/FLUX.1-dev"]
    torch.manual_seed(0)
    pipeline = pipelines.build_pipeline(spec, "tiny", dtype=torch.float32, device="cpu",
                                        max_sequence_length=spec.family.tiny_max_sequence_length)
    return pipeline.transformer


def _forward(transformer):
    torch.manual_seed(1)
    config = transformer.config
    tokens, text = 16, 8
    return transformer(
        hidden_states=torch.randn(1, tokens, config.in_channels),
        encoder_hidden_states=torch.randn(1, text, config.joint_attention_dim),
        pooled_projections=torch.randn(1, config.pooled_projection_dim),
        timestep=torch.tensor([0.5]), guidance=torch.tensor([3.5]),
        img_ids=torch.zeros(tokens, 3), txt_ids=torch.zeros(text, 3), return_dict=False)[0]


def test_fused_qkv_computes_the_same_and_drops_the_separate_projections():
    from diffusers.models.attention import AttentionModuleMixin

    transformer = _tiny_flux_transformer()
    reference = _forward(transformer)
    bytes_before = options.module_bytes(transformer)
    fused = quantize.fuse_qkv(transformer)
    attentions = [m for m in transformer.modules() if isinstance(m, AttentionModuleMixin)]
    assert fused == len(attentions) == 2  # one double-stream and one single-stream block
    for attention in attentions:
        assert attention.fused_projections and not hasattr(attention, "to_q")
    assert not any(hasattr(a, "add_q_proj") for a in attentions if hasattr(a, "to_added_qkv"))
    # Same weights, regrouped: no byte more than before.
    assert options.module_bytes(transformer) == bytes_before
    torch.testing.assert_close(_forward(transformer), reference, rtol=1e-5, atol=1e-5)
    assert quantize.fuse_qkv(transformer) == 2  # already fused: nothing left to drop


TORCHAO_SITE = REPO / ".cache" / f"torchao-{quantize.TORCHAO_VERSION}"


def run_fp8_worker(mode: str) -> dict:
    """tests/workers/fp8_denoiser_on_cpu.py's JSON, with torchao 0.18.0 on its path. torchao
    lives beside the test environment (scripts/test.sh installs it there): where it is
    installed, diffusers imports it with its pipelines and prints to stderr."""
    assert (TORCHAO_SITE / "torchao").is_dir(), (
        f"torchao {quantize.TORCHAO_VERSION} is not at {TORCHAO_SITE}: run scripts/test.sh")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(TORCHAO_SITE), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "workers" /
                                               "fp8_denoiser_on_cpu.py"), mode],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("floor, finite", [("floor", True), ("no-floor", False)])
def test_fp8_activations_of_zero_rows_stay_finite_in_real_wan_and_sana_pipelines(floor, finite):
    # On an H200, Wan's and SANA's FP8 denoisers decoded NaN (docs/benchmarks.md): torchao takes
    # each activation row's scale from its largest value, so a row of zeros (Wan's zero-padded
    # text tokens) quantizes to 0/0. The scheme's floor keeps them zeros. Without it, the same
    # real pipelines must decode NaN, or this test would not be testing the floor.
    found = run_fp8_worker(floor)
    assert set(found) == {"Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                          "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers"}
    for model in found.values():
        assert model["fp8_linear_layers"] >= model["linear_layers"] - 1 > 0
        assert model["finite"] is finite
