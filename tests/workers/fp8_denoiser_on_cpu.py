"""The FP8 denoiser (kernels/quantize.py, torchao's real float8 tensors) inside real diffusers
pipelines on the CPU, whose torch runs `_scaled_mm` without FP8 tensor cores. Prints one JSON
object: per model, how many linear layers went to FP8 and whether the decoded output is finite.

    python fp8_denoiser_on_cpu.py floor|no-floor   (no-floor: torchao's own, unfloored scales)
    python fp8_denoiser_on_cpu.py settings   inductor's settings before and after the benchmark's
        FP8 quantization of one linear layer, and after torchao's default config

Run with torchao on PYTHONPATH (tests/test_quantize.py). Tiny models, with the denoiser's widths
made multiples of 16 (torchao leaves any other linear layer in bf16)."""

import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchao.quantization.quant_api as torchao_api  # noqa: E402

from mlenergy.diffusion.kernels import quantize  # noqa: E402
from mlenergy.diffusion.models.pipelines import build_pipeline  # noqa: E402
from mlenergy.diffusion.models.registry import MODELS  # noqa: E402

# torchao refuses CPUs outright (no FP8 tensor cores); the arithmetic it would run is torch's.
torchao_api._check_hardware_support = lambda granularity: None
if sys.argv[1] == "no-floor":
    quantize.ACTIVATION_SCALE_FLOOR = None
if sys.argv[1] == "settings":
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

    from mlenergy.diffusion.engine.options_apply import inductor_settings

    before = inductor_settings()
    config = quantize.fp8_config()
    summary = quantize.quantize_fp8(torch.nn.Sequential(torch.nn.Linear(32, 32,
                                                                        dtype=torch.bfloat16)))
    after = inductor_settings()
    quantize_(torch.nn.Linear(32, 32, dtype=torch.bfloat16),
              Float8DynamicActivationFloat8WeightConfig())
    print(json.dumps({"before": before, "after_benchmark_fp8": after,
                      "after_torchao_default": inductor_settings(),
                      "fp8_linear_layers": summary["fp8_linear_layers"],
                      "set_inductor_config": config.set_inductor_config,
                      "activation_value_lb": config.activation_value_lb}))
    sys.exit(0)

WIDER = {  # FP8-compatible widths; every other setting is the family's tiny one
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": dict(attention_head_dim=16, ffn_dim=64),
    "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers": dict(
        attention_head_dim=16, cross_attention_head_dim=16, cross_attention_dim=32,
        mlp_ratio=2.0),
}

found = {}
for model_id, wider in WIDER.items():
    spec = MODELS[model_id]
    spec = dataclasses.replace(spec, tiny_overrides={
        "transformer": {**spec.family.tiny["transformer"], **wider}})
    pipeline = build_pipeline(spec, "tiny", dtype=torch.bfloat16, device="cpu",
                              max_sequence_length=spec.family.tiny_max_sequence_length)
    pipeline.set_progress_bar_config(disable=True)
    summary = quantize.quantize_fp8(pipeline.transformer)
    kwargs = dict(num_frames=5) if spec.family.task == "text-to-video" else {}
    output = pipeline(prompt=["a red fox in the snow"], height=64, width=64,
                      num_inference_steps=2, output_type="np",
                      generator=torch.Generator().manual_seed(0), **kwargs)
    decoded = output.frames if spec.family.task == "text-to-video" else output.images
    found[model_id] = {"fp8_linear_layers": summary["fp8_linear_layers"],
                       "linear_layers": summary["linear_layers"],
                       "finite": bool(np.isfinite(decoded).all())}
print(json.dumps(found))
