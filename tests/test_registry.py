"""The model registry: defaults, and full-size architectures that match the published models."""

from __future__ import annotations

import pytest
import torch

from mlenergy.diffusion.pipelines import build_pipeline
from mlenergy.diffusion.registry import MODELS, known_model_ids

# Published parameter counts (billions) of each model's denoiser.
DENOISER_BILLIONS = {
    "black-forest-labs/FLUX.1-dev": 11.90,
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": 0.611,
    "PixArt-alpha/PixArt-XL-2-1024-MS": 0.611,
    "stabilityai/stable-diffusion-3-medium-diffusers": 2.03,
    "stabilityai/stable-diffusion-3.5-medium": 2.24,
    "stabilityai/stable-diffusion-3.5-large": 8.06,
    "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers": 1.50,
    "stabilityai/stable-diffusion-xl-base-1.0": 2.57,
}

# Video denoisers (billions), and their defaults: steps, height, width, frames, fps.
VIDEO_DENOISER_BILLIONS = {
    "THUDM/CogVideoX-2b": 1.69,
    "THUDM/CogVideoX1.5-5B": 5.57,
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": 1.42,
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": 14.29,
    "tencent/HunyuanVideo": 12.82,
    "maxin-cn/Latte-1": 1.06,
}
VIDEO_DEFAULTS = {
    "THUDM/CogVideoX-2b": (50, 480, 720, 49, 8),
    "THUDM/CogVideoX1.5-5B": (50, 768, 1360, 81, 8),
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": (50, 480, 832, 81, 15),
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": (50, 480, 832, 81, 15),
    "tencent/HunyuanVideo": (50, 720, 1280, 129, 15),
    "maxin-cn/Latte-1": (50, 512, 512, 16, 8),
}

REQUIRED_DEFAULTS = {
    "black-forest-labs/FLUX.1-dev": (28, "bfloat16", 3.5),
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": (20, "bfloat16", None),
    "stabilityai/stable-diffusion-3-medium-diffusers": (28, "bfloat16", None),
    "stabilityai/stable-diffusion-3.5-large": (28, "bfloat16", None),
    "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers": (50, "float16", None),
    "stabilityai/stable-diffusion-xl-base-1.0": (30, "float16", None),
    "PixArt-alpha/PixArt-XL-2-1024-MS": (20, "bfloat16", None),
}


def test_every_required_model_is_registered_with_its_defaults():
    for model_id, (steps, dtype, guidance) in REQUIRED_DEFAULTS.items():
        spec = MODELS[model_id]
        assert (spec.steps, spec.dtype) == (steps, dtype)
        assert guidance is None or spec.guidance_scale == guidance
        assert spec.task == "text-to-image"
    assert set(known_model_ids("text-to-image")) == set(DENOISER_BILLIONS)


def test_every_video_model_is_registered_with_its_defaults():
    assert set(known_model_ids("text-to-video")) == set(VIDEO_DEFAULTS)
    for model_id, defaults in VIDEO_DEFAULTS.items():
        spec = MODELS[model_id]
        assert spec.task == "text-to-video"
        assert (spec.steps, spec.height, spec.width, spec.num_frames, spec.fps) == defaults
    assert MODELS["zai-org/CogVideoX-2b"] is MODELS["THUDM/CogVideoX-2b"]
    assert MODELS["zai-org/CogVideoX1.5-5B"] is MODELS["THUDM/CogVideoX1.5-5B"]


@pytest.mark.parametrize("model_id", sorted({**DENOISER_BILLIONS, **VIDEO_DENOISER_BILLIONS}))
def test_full_size_architecture_matches_the_published_model(model_id):
    spec = MODELS[model_id]
    pipe = build_pipeline(spec, "random", dtype=torch.bfloat16, device="meta",
                          max_sequence_length=spec.max_sequence_length)
    denoiser = getattr(pipe, spec.family.denoiser_slot)
    billions = sum(p.numel() for p in denoiser.parameters()) / 1e9
    expected = {**DENOISER_BILLIONS, **VIDEO_DENOISER_BILLIONS}[model_id]
    assert billions == pytest.approx(expected, rel=0.01)
    if spec.t5_slot:
        t5 = getattr(pipe, spec.t5_slot)
        assert type(t5).__name__ in ("T5EncoderModel", "UMT5EncoderModel")
        assert t5.config.d_model in (4096, 2048)  # T5-XXL, or mT5-XL for HunyuanDiT
    assert all(p.dtype == torch.bfloat16 for p in denoiser.parameters())


def test_random_weights_are_the_same_on_every_build():
    spec = MODELS["black-forest-labs/FLUX.1-dev"]
    a = build_pipeline(spec, "tiny", dtype=torch.float32, device="cpu", max_sequence_length=16)
    b = build_pipeline(spec, "tiny", dtype=torch.float32, device="cpu", max_sequence_length=16)
    for (name, pa), (_, pb) in zip(a.transformer.named_parameters(), b.transformer.named_parameters()):
        assert torch.equal(pa, pb), name
    assert not a.transformer.training and not a.text_encoder_2.training
