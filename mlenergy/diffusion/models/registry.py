"""The model registry: one table of data, model id -> family, defaults and full-size architecture.

The architecture values are those of each model's published `config.json` files. They let
`--workload.weights random` build the real architecture with random weights, so hardware can be
measured without downloading anything: time and energy do not depend on the weight values.
What a user types (any hub id, an alias, a local directory) becomes a `ModelSpec` in
`resolve.py`; the registry's rows are its defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from mlenergy.diffusion.models.families import FAMILIES, Family, Task

# --workload.weights that builds a few-layer stand-in of the model's family in code.
TINY_WEIGHTS = "tiny"


def is_tiny(weights: str | None) -> bool:
    return weights == TINY_WEIGHTS

from mlenergy.diffusion.models.published import (
    CLIP_G, CLIP_L, COGVIDEOX_DDIM, DC_AE_F32C32, GEMMA2_2B, HUNYUAN_BERT, LLAVA_LLAMA3_8B, MT5_XL,
    PIXART_XL_1024, SANA15_TRANSFORMER, SANA_SCHEDULER, SD3_SCHEDULER, SDXL_SCHEDULER, T5_XXL,
    UMT5_XXL, VAE_FLUX, VAE_SD, VAE_SD3, VAE_SDXL, VAE_SVD_TEMPORAL_DECODER, WAN_SCHEDULER,
    WAN_TRANSFORMER, WAN_VAE,
)


@dataclass(frozen=True)
class ModelSpec:
    # The id results, run directories and model_info.json carry: in the registry, the model's
    # hub id; once resolved, the id the user typed (or the name given to a local directory).
    model_id: str
    family_name: str
    nickname: str
    steps: int
    height: int
    width: int
    guidance_scale: float
    dtype: str
    # T5 tokens the pipeline is called with; None where the pipeline fixes it itself.
    max_sequence_length: int | None
    # Full-size architecture: pipeline slot -> config kwargs (scheduler included).
    architecture: Mapping[str, Mapping[str, Any]]
    aliases: tuple[str, ...] = ()
    num_frames: int | None = None
    fps: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    # Pretrained loading. In the registry, `revision` is the branch or commit of `model_id` that
    # holds the diffusers-format pipeline (None: the main branch). `source` is what
    # `from_pretrained` loads: a hub id or a local directory (None: `model_id`).
    revision: str | None = None
    variant: str | None = None
    source: str | None = None
    # Set when resolved: where each default came from (default -> source, in words), the configs
    # that replace the family's tiny ones (a checkpoint's scheduler), and scheduler settings
    # applied to every build (--workload.flow_shift).
    defaults_source: Mapping[str, str] = field(default_factory=dict)
    tiny_overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    scheduler_overrides: Mapping[str, Any] = field(default_factory=dict)

    @property
    def family(self) -> Family:
        return FAMILIES[self.family_name]

    @property
    def load_id(self) -> str:
        return self.source or self.model_id

    def component_configs(self, weights: str) -> Mapping[str, Mapping[str, Any]]:
        """Slot -> config of the pipeline `weights` builds (random or tiny), or loads
        (pretrained: the full-size architecture)."""
        if is_tiny(weights):
            return {**self.family.tiny, **self.tiny_overrides}
        return self.architecture

    def sequence_length(self, weights: str) -> int | None:
        """The text encoders' token budget: the tiny model's own, or the model's."""
        return self.family.tiny_max_sequence_length if is_tiny(weights) \
            else self.max_sequence_length

    @property
    def task(self) -> Task:
        return self.family.task

    @property
    def t5_slot(self) -> str | None:
        return self.family.t5_slot


_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        model_id="black-forest-labs/FLUX.1-dev",
        family_name="flux",
        nickname="FLUX.1 [dev]",
        steps=28, height=1024, width=1024, guidance_scale=3.5, dtype="bfloat16",
        max_sequence_length=512,
        architecture={
            "text_encoder": CLIP_L,
            "text_encoder_2": T5_XXL,
            "transformer": dict(
                patch_size=1, in_channels=64, num_layers=19, num_single_layers=38,
                attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096,
                pooled_projection_dim=768, guidance_embeds=True, axes_dims_rope=[16, 56, 56],
            ),
            "vae": VAE_FLUX,
            "scheduler": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                              max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
        },
    ),
    ModelSpec(
        model_id="PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
        family_name="pixart-sigma",
        nickname="PixArt-Sigma XL 1024",
        steps=20, height=1024, width=1024, guidance_scale=4.5, dtype="bfloat16",
        max_sequence_length=300,
        architecture={
            "text_encoder": T5_XXL,
            "transformer": dict(PIXART_XL_1024, use_additional_conditions=False,
                                interpolation_scale=2),
            "vae": VAE_SDXL,
            "scheduler": dict(),
        },
    ),
    ModelSpec(
        model_id="PixArt-alpha/PixArt-XL-2-1024-MS",
        family_name="pixart-alpha",
        nickname="PixArt-alpha XL 1024",
        steps=20, height=1024, width=1024, guidance_scale=4.5, dtype="bfloat16",
        max_sequence_length=120,
        architecture={
            "text_encoder": T5_XXL,
            "transformer": dict(PIXART_XL_1024, use_additional_conditions=True),
            "vae": VAE_SD,
            "scheduler": dict(),
        },
    ),
    ModelSpec(
        model_id="stabilityai/stable-diffusion-3-medium-diffusers",
        family_name="sd3",
        nickname="Stable Diffusion 3 Medium",
        steps=28, height=1024, width=1024, guidance_scale=7.0, dtype="bfloat16",
        max_sequence_length=256,
        architecture={
            "text_encoder": CLIP_L,
            "text_encoder_2": CLIP_G,
            "text_encoder_3": T5_XXL,
            "transformer": dict(
                sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                pos_embed_max_size=192,
            ),
            "vae": VAE_SD3,
            "scheduler": SD3_SCHEDULER,
        },
    ),
    ModelSpec(
        model_id="stabilityai/stable-diffusion-3.5-medium",
        family_name="sd3",
        nickname="Stable Diffusion 3.5 Medium",
        steps=28, height=1024, width=1024, guidance_scale=4.5, dtype="bfloat16",
        max_sequence_length=256,
        architecture={
            "text_encoder": CLIP_L,
            "text_encoder_2": CLIP_G,
            "text_encoder_3": T5_XXL,
            "transformer": dict(
                sample_size=128, patch_size=2, in_channels=16, num_layers=24,
                attention_head_dim=64, num_attention_heads=24, joint_attention_dim=4096,
                caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
                pos_embed_max_size=384, qk_norm="rms_norm",
                dual_attention_layers=list(range(13)),
            ),
            "vae": VAE_SD3,
            "scheduler": SD3_SCHEDULER,
        },
    ),
    ModelSpec(
        model_id="stabilityai/stable-diffusion-3.5-large",
        family_name="sd3",
        nickname="Stable Diffusion 3.5 Large",
        steps=28, height=1024, width=1024, guidance_scale=3.5, dtype="bfloat16",
        max_sequence_length=256,
        architecture={
            "text_encoder": CLIP_L,
            "text_encoder_2": CLIP_G,
            "text_encoder_3": T5_XXL,
            "transformer": dict(
                sample_size=128, patch_size=2, in_channels=16, num_layers=38,
                attention_head_dim=64, num_attention_heads=38, joint_attention_dim=4096,
                caption_projection_dim=2432, pooled_projection_dim=2048, out_channels=16,
                pos_embed_max_size=192, qk_norm="rms_norm",
            ),
            "vae": VAE_SD3,
            "scheduler": SD3_SCHEDULER,
        },
    ),
    ModelSpec(
        model_id="Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers",
        family_name="hunyuandit",
        nickname="HunyuanDiT v1.2",
        steps=50, height=1024, width=1024, guidance_scale=5.0, dtype="float16",
        max_sequence_length=None,
        architecture={
            "text_encoder": HUNYUAN_BERT,
            "text_encoder_2": MT5_XL,
            "transformer": dict(
                num_attention_heads=16, attention_head_dim=88, in_channels=4, patch_size=2,
                activation_fn="gelu-approximate", sample_size=128, hidden_size=1408,
                num_layers=40, mlp_ratio=4.3637, learn_sigma=True, cross_attention_dim=1024,
                norm_type="layer_norm", cross_attention_dim_t5=2048, pooled_projection_dim=1024,
                text_len=77, text_len_t5=256, use_style_cond_and_image_meta_size=False,
            ),
            "vae": VAE_SDXL,
            "scheduler": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.018,
                              clip_sample=False, prediction_type="v_prediction",
                              steps_offset=1, timestep_spacing="leading"),
        },
    ),
    ModelSpec(
        model_id="stabilityai/stable-diffusion-xl-base-1.0",
        family_name="sdxl",
        nickname="Stable Diffusion XL",
        steps=30, height=1024, width=1024, guidance_scale=5.0, dtype="float16",
        max_sequence_length=None,
        architecture={
            "text_encoder": CLIP_L,
            "text_encoder_2": dict(CLIP_G, projection_dim=1280),
            "unet": dict(
                sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
                block_out_channels=[320, 640, 1280],
                down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
                attention_head_dim=[5, 10, 20], cross_attention_dim=2048,
                transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            ),
            "vae": VAE_SDXL,
            "scheduler": SDXL_SCHEDULER,
        },
    ),
    ModelSpec(
        model_id="Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers",
        family_name="sana",
        nickname="SANA 1.5 1.6B",
        steps=20, height=1024, width=1024, guidance_scale=4.5, dtype="bfloat16",
        max_sequence_length=300,
        architecture={
            "text_encoder": GEMMA2_2B,
            "transformer": dict(SANA15_TRANSFORMER, num_layers=20),
            "vae": DC_AE_F32C32,
            "scheduler": SANA_SCHEDULER,
        },
    ),
    ModelSpec(
        model_id="Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers",
        family_name="sana",
        nickname="SANA 1.5 4.8B",
        steps=20, height=1024, width=1024, guidance_scale=4.5, dtype="bfloat16",
        max_sequence_length=300,
        architecture={
            "text_encoder": GEMMA2_2B,
            # SANA 1.5 grew the 1.6B model in depth only: 60 blocks of the same width.
            "transformer": dict(SANA15_TRANSFORMER, num_layers=60),
            "vae": DC_AE_F32C32,
            "scheduler": SANA_SCHEDULER,
        },
    ),
)

_VIDEO_MODELS: tuple[ModelSpec, ...] = (
    ModelSpec(
        model_id="zai-org/CogVideoX-2b",
        aliases=("THUDM/CogVideoX-2b",),
        family_name="cogvideox",
        nickname="CogVideoX 2B",
        steps=50, height=480, width=720, num_frames=49, fps=8, guidance_scale=6.0,
        dtype="float16", max_sequence_length=226,
        architecture={
            "text_encoder": T5_XXL,
            "transformer": dict(
                num_attention_heads=30, attention_head_dim=64, in_channels=16, out_channels=16,
                time_embed_dim=512, text_embed_dim=4096, num_layers=30, sample_width=90,
                sample_height=60, sample_frames=49, patch_size=2, temporal_compression_ratio=4,
                max_text_seq_length=226, spatial_interpolation_scale=1.875,
            ),
            "vae": dict(scaling_factor=1.15258426),
            "scheduler": COGVIDEOX_DDIM,
        },
    ),
    ModelSpec(
        model_id="zai-org/CogVideoX1.5-5B",
        aliases=("THUDM/CogVideoX1.5-5B",),
        family_name="cogvideox",
        nickname="CogVideoX 1.5 5B",
        steps=50, height=768, width=1360, num_frames=81, fps=8, guidance_scale=6.0,
        dtype="bfloat16", max_sequence_length=224,
        architecture={
            "text_encoder": T5_XXL,
            "transformer": dict(
                num_attention_heads=48, attention_head_dim=64, in_channels=16, out_channels=16,
                time_embed_dim=512, text_embed_dim=4096, num_layers=42, sample_width=170,
                sample_height=96, sample_frames=81, patch_size=2, patch_size_t=2,
                patch_bias=False, temporal_compression_ratio=4, max_text_seq_length=224,
                use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False,
            ),
            "vae": dict(scaling_factor=0.7, invert_scale_latents=True),
            "scheduler": COGVIDEOX_DDIM,
        },
    ),
    ModelSpec(
        model_id="Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
        family_name="wan",
        nickname="Wan 2.1 T2V 1.3B",
        steps=50, height=480, width=832, num_frames=81, fps=15, guidance_scale=5.0,
        dtype="bfloat16", max_sequence_length=512,
        architecture={
            "text_encoder": UMT5_XXL,
            "transformer": dict(WAN_TRANSFORMER, num_attention_heads=12, ffn_dim=8960,
                                num_layers=30),
            "vae": WAN_VAE,
            "scheduler": WAN_SCHEDULER,
        },
    ),
    ModelSpec(
        model_id="Wan-AI/Wan2.1-T2V-14B-Diffusers",
        family_name="wan",
        nickname="Wan 2.1 T2V 14B",
        steps=50, height=480, width=832, num_frames=81, fps=15, guidance_scale=5.0,
        dtype="bfloat16", max_sequence_length=512,
        architecture={
            "text_encoder": UMT5_XXL,
            "transformer": dict(WAN_TRANSFORMER, num_attention_heads=40, ffn_dim=13824,
                                num_layers=40),
            "vae": WAN_VAE,
            "scheduler": WAN_SCHEDULER,
        },
    ),
    ModelSpec(
        model_id="tencent/HunyuanVideo",
        # The main branch of tencent/HunyuanVideo holds the original weights; the diffusers
        # pipeline is on this pull-request branch (the ML.ENERGY v3 runs loaded it), and a copy
        # of it at hunyuanvideo-community/HunyuanVideo.
        revision="refs/pr/18",
        aliases=("hunyuanvideo-community/HunyuanVideo",),
        family_name="hunyuanvideo",
        nickname="HunyuanVideo",
        steps=50, height=720, width=1280, num_frames=129, fps=15, guidance_scale=6.0,
        dtype="bfloat16", max_sequence_length=256,
        architecture={
            "text_encoder": LLAVA_LLAMA3_8B,
            "text_encoder_2": CLIP_L,
            "transformer": dict(
                in_channels=16, out_channels=16, num_attention_heads=24, attention_head_dim=128,
                num_layers=20, num_single_layers=40, num_refiner_layers=2, mlp_ratio=4.0,
                patch_size=2, patch_size_t=1, qk_norm="rms_norm", guidance_embeds=True,
                text_embed_dim=4096, pooled_projection_dim=768, rope_theta=256.0,
                rope_axes_dim=[16, 56, 56],
            ),
            "vae": dict(latent_channels=16, scaling_factor=0.476986),
            "scheduler": dict(shift=7.0),
        },
    ),
    ModelSpec(
        model_id="maxin-cn/Latte-1",
        family_name="latte",
        nickname="Latte-1",
        steps=50, height=512, width=512, num_frames=16, fps=8, guidance_scale=7.5,
        dtype="float16", max_sequence_length=None,
        architecture={
            "text_encoder": T5_XXL,
            "transformer": dict(
                num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                num_layers=28, cross_attention_dim=1152, sample_size=64, patch_size=2,
                caption_channels=4096, video_length=16, norm_type="ada_norm_single",
                num_embeds_ada_norm=1000, activation_fn="gelu-approximate", attention_bias=True,
                norm_elementwise_affine=False, norm_eps=1e-6,
            ),
            "vae": VAE_SVD_TEMPORAL_DECODER,
            "scheduler": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                              clip_sample=False, steps_offset=1),
        },
    ),
)

MODELS: dict[str, ModelSpec] = {}
for _spec in _MODELS + _VIDEO_MODELS:
    for _name in (_spec.model_id, *_spec.aliases):
        MODELS[_name] = _spec


def known_model_ids(task: Task | None = None) -> list[str]:
    return sorted(m.model_id for m in _MODELS + _VIDEO_MODELS if task is None or m.task == task)


def models_of_family(family: str) -> list[ModelSpec]:
    return [m for m in _MODELS + _VIDEO_MODELS if m.family_name == family]
