"""The FLOP count of a denoiser forward against a hand count, and the floor arithmetic."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from mlenergy.diffusion.models.families import FAMILIES
from mlenergy.diffusion.models.registry import MODELS
from mlenergy.diffusion.probes import flops


def tiny_flux_inputs(batch: int, height: int, width: int, text: int) -> dict:
    image = (height // 16) * (width // 16)
    return dict(hidden_states=torch.randn(batch, image, 16),
                encoder_hidden_states=torch.randn(batch, text, 32),
                pooled_projections=torch.randn(batch, 32), timestep=torch.ones(batch),
                guidance=torch.ones(batch), img_ids=torch.zeros(image, 3),
                txt_ids=torch.zeros(text, 3), return_dict=False)


def test_tiny_flux_count_matches_a_hand_count():
    import diffusers

    torch.manual_seed(0)
    model = diffusers.FluxTransformer2DModel(**FAMILIES["flux"].tiny["transformer"]).eval()
    count = flops.count_forward(model, (), tiny_flux_inputs(2, 128, 128, 16))

    # Width d = 2 heads x 16 = 32; 64 image tokens (128/16 squared), 16 text tokens, 80 in all.
    d, n, t, seq = 32, 64, 16, 80
    per_sample = (2 * 256 * d + 2 * d * d) * 2          # timestep and guidance embedders
    per_sample += 2 * 32 * d + 2 * d * d                 # pooled text embedder
    per_sample += 2 * (2 * d * 6 * d) + 2 * d * 3 * d + 2 * d * 2 * d  # modulation linears
    per_token = 2 * n * 16 * d + 2 * t * 32 * d          # x and context embedders
    per_token += (4 * 2 * n * d * d + 2 * 2 * n * d * 4 * d      # double block: image stream
                  + 4 * 2 * t * d * d + 2 * 2 * t * d * 4 * d)   # and text stream
    per_token += 3 * 2 * seq * d * d + 2 * seq * d * 4 * d + 2 * seq * 5 * d * d  # single block
    per_token += 2 * n * d * 16                          # output projection
    attention = 2 * 4 * seq * seq * d                    # two blocks, QK^T and AV
    batch = 2
    assert count["total"] == batch * (per_sample + per_token + attention)
    assert count["attention"] == batch * attention
    hand = flops.flux_forward_flops(model.config, 128, 128, 16, batch)
    assert hand == {"linear": batch * (per_sample + per_token), "attention": batch * attention,
                    "total": count["total"], "per_sample": batch * per_sample}


def test_cpu_attention_is_counted_although_flop_counter_mode_misses_it():
    q = torch.randn(2, 3, 10, 8)
    with FlopCounterMode(display=False) as plain:
        F.scaled_dot_product_attention(q, q, q)
    counter = FlopCounterMode(display=False, custom_mapping=flops.attention_formulas())
    with counter:
        F.scaled_dot_product_attention(q, q, q)
    assert plain.get_total_flops() == 0  # what the issue warned about
    assert counter.get_total_flops() == 4 * 2 * 3 * 10 * 10 * 8


def test_flux_dev_at_1024_is_about_74_tflop():
    arch = MODELS["black-forest-labs/FLUX.1-dev"].architecture["transformer"]
    count = flops.flux_forward_flops(arch, 1024, 1024, 512, 1)
    assert count["total"] / 1e12 == pytest.approx(74.4, abs=0.05)
    assert count["linear"] / 1e12 == pytest.approx(59.5, abs=0.05)
    assert count["attention"] / 1e12 == pytest.approx(14.9, abs=0.05)


@pytest.mark.parametrize("name,dtype,peak", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", 989.0), ("NVIDIA H100 PCIe", "bfloat16", 756.0),
    ("NVIDIA H200", "float16", 989.0), ("NVIDIA A100-SXM4-80GB", "bfloat16", 312.0),
    ("NVIDIA H100 80GB HBM3", "float32", None), ("Some Future GPU", "bfloat16", None),
    ("AMD EPYC", "bfloat16", None)])
def test_peak_table(name, dtype, peak):
    assert flops.peak_tflops(name, dtype) == peak


def test_floor_arithmetic():
    # 74.4 TFLOP x 28 forwards in 5 s of denoising at 3500 J, one H100.
    out = flops.floor(flops_per_forward=74.4e12, forwards_per_iteration=28, denoising_time_s=5.0,
                      denoising_energy_j=3500.0, iteration_time_s=5.3, iteration_energy_j=3700.0,
                      num_gpus=1, peak_tflops_per_gpu=989.0)
    assert out["tflop_per_iteration"] == pytest.approx(2083.2)
    assert out["achieved_tflops"] == pytest.approx(416.64)
    assert out["mfu"] == pytest.approx(416.64 / 989.0)
    assert out["joules_per_tflop"] == pytest.approx(3500 / 2083.2)
    assert out["time_floor_s"] == pytest.approx(2083.2 / 989.0)
    assert out["energy_floor_j"] == pytest.approx(2083.2 / 989.0 * 700.0)
    assert out["power_basis"] == "denoising"
    assert out["denoising_time_over_floor"] == pytest.approx(5.0 / (2083.2 / 989.0))
    unmeasured = flops.floor(flops_per_forward=1e12, forwards_per_iteration=2, denoising_time_s=1.0,
                             denoising_energy_j=None, iteration_time_s=1.2, iteration_energy_j=None,
                             num_gpus=0, peak_tflops_per_gpu=None)
    assert unmeasured["achieved_tflops"] == pytest.approx(2.0)
    assert unmeasured["mfu"] is None and unmeasured["energy_floor_j"] is None
    assert unmeasured["joules_per_tflop"] is None
