"""The model registry: defaults, and full-size architectures that match the published models."""

from __future__ import annotations

import pytest
import torch

from mlenergy.diffusion.models.pipelines import build_pipeline
from mlenergy.diffusion.models.registry import MODELS, known_model_ids

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
    # SANA 1.5 as its diffusers config.json builds it (published as "1.6B" and "4.8B": the 4.8B
    # model is the 1.6B one grown from 20 to 60 blocks, 4.72 B counted).
    "Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers": 1.605,
    "Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers": 4.722,
}

# Video denoisers (billions), and their defaults: steps, height, width, frames, fps.
VIDEO_DENOISER_BILLIONS = {
    "zai-org/CogVideoX-2b": 1.69,
    "zai-org/CogVideoX1.5-5B": 5.57,
    "Wan-AI/Wan2.1-T2V-1.3B-Diffusers": 1.42,
    "Wan-AI/Wan2.1-T2V-14B-Diffusers": 14.29,
    "tencent/HunyuanVideo": 12.82,
    "maxin-cn/Latte-1": 1.06,
}
VIDEO_DEFAULTS = {
    "zai-org/CogVideoX-2b": (50, 480, 720, 49, 8),
    "zai-org/CogVideoX1.5-5B": (50, 768, 1360, 81, 8),
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
    # The leaderboard's ids are the registry's; the former org's ids stay as aliases.
    assert MODELS["zai-org/CogVideoX-2b"] is MODELS["THUDM/CogVideoX-2b"]
    assert MODELS["zai-org/CogVideoX1.5-5B"] is MODELS["THUDM/CogVideoX1.5-5B"]
    assert MODELS["tencent/HunyuanVideo"].revision == "refs/pr/18"


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


@pytest.mark.parametrize("model_id,published", [
    ("Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers", 1.6),
    ("Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers", 4.8),
])
def test_sana_15_full_size_builds_at_its_published_size(model_id, published):
    spec = MODELS[model_id]
    assert (spec.steps, spec.height, spec.width, spec.dtype) == (20, 1024, 1024, "bfloat16")
    pipe = build_pipeline(spec, "random", dtype=torch.bfloat16, device="meta",
                          max_sequence_length=spec.max_sequence_length)
    billions = {slot: sum(p.numel() for p in getattr(pipe, slot).parameters()) / 1e9
                for slot in ("transformer", "text_encoder", "vae")}
    assert billions["transformer"] == pytest.approx(published, rel=0.02)
    # Gemma 2 2B's decoder, and DC-AE f32c32 (a 32x VAE: 1024 px is 32 x 32 latents).
    assert billions["text_encoder"] == pytest.approx(2.614, rel=0.001)
    assert billions["vae"] == pytest.approx(0.312, rel=0.01)
    assert type(pipe).__name__ == "SanaPipeline" and spec.family.spatial_factor == 32
    # SANA pads its text to its system instruction's length plus 300 tokens: the in-memory
    # tokenizer counts the instruction about as Gemma's does (a token a word), not a token a letter.
    import inspect

    instruction = inspect.signature(type(pipe).__call__).parameters[
        "complex_human_instruction"].default
    tokens = len(pipe.tokenizer("\n".join(instruction)).input_ids)
    assert 150 < tokens < 400 and len("\n".join(instruction)) > 1000


def test_latte_decodes_with_its_temporal_decoder():
    spec = MODELS["maxin-cn/Latte-1"]
    pipe = build_pipeline(spec, "random", dtype=torch.bfloat16, device="meta",
                          max_sequence_length=None)
    assert type(pipe.vae).__name__ == "AutoencoderKLTemporalDecoder"
    assert spec.family.pretrained_subfolders == {"vae": "vae_temporal_decoder"}
