"""Pipeline families: how a diffusers pipeline of each kind is put together and run by xDiT.

A family knows its classes, the components it needs, its spatial factor and what xDiT can do
with it. Model-specific numbers (layer counts, widths, default steps) live in `registry.py`.
The tiny variant of each family is here because it is the same for every model of the family:
a few layers, a few channels, random weights, built in milliseconds on a CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

Task = Literal["text-to-image", "text-to-video"]

# Component kinds. Text encoders name the tokenizer family they pair with; `pipelines.py`
# builds each kind from a config mapping.
ComponentKind = Literal[
    "clip", "clip_with_projection", "t5", "umt5", "bert", "llama", "vae", "transformer", "unet",
    "scheduler",
]


@dataclass(frozen=True)
class Component:
    """One slot of a pipeline: its diffusers/transformers class and what kind of thing it is."""

    kind: ComponentKind
    cls: str
    # The pipeline's tokenizer slot that feeds this text encoder, if any.
    tokenizer_slot: str | None = None


@dataclass(frozen=True)
class Family:
    name: str
    task: Task
    diffusers_pipeline: str
    # xDiT's pipeline class (exported by xfuser). Families without one run the diffusers pipeline
    # with xDiT's sequence-parallel transformer class in the denoiser slot instead.
    xfuser_pipeline: str | None
    components: Mapping[str, Component]
    # Pixels per token side: VAE downsampling times the denoiser's patch size.
    spatial_factor: int
    # The denoiser slot, and the config key that holds its attention head count.
    denoiser_slot: str = "transformer"
    heads_key: str | None = "num_attention_heads"
    # The text-encoder slot that holds T5 (for the FP8 T5 option); None where there is no T5.
    t5_slot: str | None = None
    supports_sequence_parallel: bool = True
    supports_cache: bool = False  # xDiT's TeaCache / FBCache are FLUX-only
    # "module:Class" of xDiT's transformer, for families without an xDiT pipeline class.
    xfuser_transformer: str | None = None
    # Video: pixels-to-latent frame compression (frame counts must be 1 + k x this), the call
    # argument that takes the frame count, and the denoiser config key that fixes the frame
    # count, for models trained at one length only.
    temporal_factor: int = 1
    frames_argument: str = "num_frames"
    fixed_frames_key: str | None = None
    # Decode in tiles: the full-resolution video VAEs do not fit in GPU memory otherwise.
    vae_tiling: bool = False
    # Extra keyword arguments the diffusers pipeline constructor needs beyond its components.
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Extra keyword arguments of every pipeline call.
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Tiny variant: slot -> config kwargs, and the T5 length to use with it.
    tiny: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tiny_max_sequence_length: int | None = None


# Sizes shared by the tiny text encoders. The in-memory tokenizers have fewer than 64 entries.
_TINY_VOCAB = 64
_TINY_CLIP = dict(
    vocab_size=_TINY_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
)
_TINY_T5 = dict(vocab_size=_TINY_VOCAB, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4)
# Four down blocks: a VAE scale factor of 8, as every real model here has (HunyuanDiT's RoPE
# assumes it).
_TINY_VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4, sample_size=64,
)

# Video VAEs: three spatial halvings (x8) and two temporal ones (x4).
_TINY_VIDEO_VAE_BLOCKS = dict(block_out_channels=[8, 8, 8, 8], layers_per_block=1)

# Generate at the requested size, not at the nearest of the model's aspect-ratio bins.
_AT_REQUESTED_SIZE = dict(use_resolution_binning=False)

FAMILIES: dict[str, Family] = {
    "flux": Family(
        name="flux",
        task="text-to-image",
        diffusers_pipeline="FluxPipeline",
        xfuser_pipeline="xFuserFluxPipeline",
        components={
            "text_encoder": Component("clip", "CLIPTextModel", "tokenizer"),
            "text_encoder_2": Component("t5", "T5EncoderModel", "tokenizer_2"),
            "transformer": Component("transformer", "FluxTransformer2DModel"),
            "vae": Component("vae", "AutoencoderKL"),
            "scheduler": Component("scheduler", "FlowMatchEulerDiscreteScheduler"),
        },
        spatial_factor=16,
        t5_slot="text_encoder_2",
        supports_cache=True,
        tiny={
            "text_encoder": _TINY_CLIP,
            "text_encoder_2": _TINY_T5,
            "transformer": dict(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[4, 4, 8],
            ),
            "vae": dict(_TINY_VAE, latent_channels=4, use_quant_conv=False,
                        use_post_quant_conv=False, scaling_factor=0.3611, shift_factor=0.1159),
            "scheduler": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                              max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096),
        },
        tiny_max_sequence_length=16,
    ),
    "pixart-sigma": Family(
        name="pixart-sigma",
        task="text-to-image",
        diffusers_pipeline="PixArtSigmaPipeline",
        xfuser_pipeline="xFuserPixArtSigmaPipeline",
        components={
            "text_encoder": Component("t5", "T5EncoderModel", "tokenizer"),
            "transformer": Component("transformer", "PixArtTransformer2DModel"),
            "vae": Component("vae", "AutoencoderKL"),
            "scheduler": Component("scheduler", "DPMSolverMultistepScheduler"),
        },
        spatial_factor=16,
        t5_slot="text_encoder",
        call_kwargs=_AT_REQUESTED_SIZE,
        tiny={
            "text_encoder": _TINY_T5,
            "transformer": dict(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                num_layers=2, cross_attention_dim=16, sample_size=8, patch_size=2,
                caption_channels=32, norm_num_groups=4, use_additional_conditions=False,
            ),
            "vae": dict(_TINY_VAE, latent_channels=4, scaling_factor=0.13025),
            "scheduler": dict(),
        },
        tiny_max_sequence_length=16,
    ),
    "pixart-alpha": Family(
        name="pixart-alpha",
        task="text-to-image",
        diffusers_pipeline="PixArtAlphaPipeline",
        xfuser_pipeline="xFuserPixArtAlphaPipeline",
        components={
            "text_encoder": Component("t5", "T5EncoderModel", "tokenizer"),
            "transformer": Component("transformer", "PixArtTransformer2DModel"),
            "vae": Component("vae", "AutoencoderKL"),
            "scheduler": Component("scheduler", "DPMSolverMultistepScheduler"),
        },
        spatial_factor=16,
        t5_slot="text_encoder",
        call_kwargs=_AT_REQUESTED_SIZE,
        tiny={
            "text_encoder": _TINY_T5,
            "transformer": dict(
                # Width divisible by 3: the size conditions split it in three.
                num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8,
                # The pipeline adds PixArt-alpha's size conditions only for sample size 128.
                num_layers=2, cross_attention_dim=24, sample_size=128, patch_size=2,
                caption_channels=32, norm_num_groups=4, use_additional_conditions=True,
            ),
            "vae": dict(_TINY_VAE, latent_channels=4, scaling_factor=0.18215),
            "scheduler": dict(),
        },
        tiny_max_sequence_length=16,
    ),
    "sd3": Family(
        name="sd3",
        task="text-to-image",
        diffusers_pipeline="StableDiffusion3Pipeline",
        xfuser_pipeline="xFuserStableDiffusion3Pipeline",
        components={
            "text_encoder": Component("clip_with_projection", "CLIPTextModelWithProjection", "tokenizer"),
            "text_encoder_2": Component("clip_with_projection", "CLIPTextModelWithProjection", "tokenizer_2"),
            "text_encoder_3": Component("t5", "T5EncoderModel", "tokenizer_3"),
            "transformer": Component("transformer", "SD3Transformer2DModel"),
            "vae": Component("vae", "AutoencoderKL"),
            "scheduler": Component("scheduler", "FlowMatchEulerDiscreteScheduler"),
        },
        spatial_factor=16,
        t5_slot="text_encoder_3",
        tiny={
            "text_encoder": _TINY_CLIP,
            "text_encoder_2": _TINY_CLIP,
            # T5 must be at least as wide as the two CLIP widths together (the pipeline pads to it).
            "text_encoder_3": dict(_TINY_T5, d_model=64),
            "transformer": dict(
                sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16,
                pooled_projection_dim=64, out_channels=4, pos_embed_max_size=64,
            ),
            "vae": dict(_TINY_VAE, latent_channels=4, use_quant_conv=False,
                        use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609),
            "scheduler": dict(shift=3.0),
        },
        tiny_max_sequence_length=16,
    ),
    "hunyuandit": Family(
        name="hunyuandit",
        task="text-to-image",
        diffusers_pipeline="HunyuanDiTPipeline",
        xfuser_pipeline="xFuserHunyuanDiTPipeline",
        components={
            "text_encoder": Component("bert", "BertModel", "tokenizer"),
            "text_encoder_2": Component("t5", "T5EncoderModel", "tokenizer_2"),
            "transformer": Component("transformer", "HunyuanDiT2DModel"),
            "vae": Component("vae", "AutoencoderKL"),
            "scheduler": Component("scheduler", "DDPMScheduler"),
        },
        spatial_factor=16,
        t5_slot="text_encoder_2",
        pipeline_kwargs=dict(safety_checker=None, feature_extractor=None,
                             requires_safety_checker=False),
        call_kwargs=_AT_REQUESTED_SIZE,
        tiny={
            "text_encoder": dict(vocab_size=_TINY_VOCAB, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=37,
                                 max_position_embeddings=77),
            "text_encoder_2": _TINY_T5,
            "transformer": dict(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2,
                sample_size=8, hidden_size=16, num_layers=2, mlp_ratio=2.0, learn_sigma=True,
                cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16,
                # The pipeline pads T5 to 256 tokens whatever the model size.
                text_len=77, text_len_t5=256, use_style_cond_and_image_meta_size=False,
            ),
            "vae": dict(_TINY_VAE, latent_channels=4, scaling_factor=0.13025),
            "scheduler": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.018,
                              clip_sample=False, prediction_type="v_prediction",
                              steps_offset=1, timestep_spacing="leading"),
        },
    ),
    "sdxl": Family(
        name="sdxl",
        task="text-to-image",
        diffusers_pipeline="StableDiffusionXLPipeline",
        xfuser_pipeline="xFuserStableDiffusionXLPipeline",
        components={
            "text_encoder": Component("clip", "CLIPTextModel", "tokenizer"),
            "text_encoder_2": Component("clip_with_projection", "CLIPTextModelWithProjection", "tokenizer_2"),
            "unet": Component("unet", "UNet2DConditionModel"),
            "vae": Component("vae", "AutoencoderKL"),
            "scheduler": Component("scheduler", "EulerDiscreteScheduler"),
        },
        spatial_factor=8,
        denoiser_slot="unet",
        heads_key=None,
        supports_sequence_parallel=False,
        tiny={
            "text_encoder": _TINY_CLIP,
            "text_encoder_2": _TINY_CLIP,
            "unet": dict(
                sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=[16, 32], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[2, 4],
                cross_attention_dim=64, norm_num_groups=8, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=80, transformer_layers_per_block=[1, 1],
            ),
            "vae": dict(_TINY_VAE, latent_channels=4, scaling_factor=0.13025),
            "scheduler": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              steps_offset=1, timestep_spacing="leading"),
        },
    ),
    "cogvideox": Family(
        name="cogvideox",
        task="text-to-video",
        diffusers_pipeline="CogVideoXPipeline",
        xfuser_pipeline="xFuserCogVideoXPipeline",
        components={
            "text_encoder": Component("t5", "T5EncoderModel", "tokenizer"),
            "transformer": Component("transformer", "CogVideoXTransformer3DModel"),
            "vae": Component("vae", "AutoencoderKLCogVideoX"),
            "scheduler": Component("scheduler", "CogVideoXDDIMScheduler"),
        },
        spatial_factor=16,
        t5_slot="text_encoder",
        temporal_factor=4,
        vae_tiling=True,
        tiny={
            "text_encoder": _TINY_T5,
            "transformer": dict(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                time_embed_dim=4, text_embed_dim=32, num_layers=1, sample_width=8,
                sample_height=8, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                max_text_seq_length=16,
            ),
            "vae": dict(
                _TINY_VIDEO_VAE_BLOCKS, in_channels=3, out_channels=3, latent_channels=4,
                down_block_types=["CogVideoXDownBlock3D"] * 4,
                up_block_types=["CogVideoXUpBlock3D"] * 4, norm_num_groups=2,
                temporal_compression_ratio=4,
            ),
            "scheduler": dict(),
        },
        tiny_max_sequence_length=16,
    ),
    "wan": Family(
        name="wan",
        task="text-to-video",
        diffusers_pipeline="WanPipeline",
        xfuser_pipeline=None,
        xfuser_transformer=("xfuser.model_executor.models.transformers.transformer_wan:"
                            "xFuserWanTransformer3DWrapper"),
        components={
            "text_encoder": Component("umt5", "UMT5EncoderModel", "tokenizer"),
            "transformer": Component("transformer", "WanTransformer3DModel"),
            "vae": Component("vae", "AutoencoderKLWan"),
            "scheduler": Component("scheduler", "UniPCMultistepScheduler"),
        },
        spatial_factor=16,
        t5_slot="text_encoder",
        temporal_factor=4,
        tiny={
            "text_encoder": _TINY_T5,
            "transformer": dict(
                patch_size=[1, 2, 2], num_attention_heads=2, attention_head_dim=12,
                in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32,
                num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                rope_max_seq_len=1024,  # as the real models: the default sizes fit
            ),
            # Sixteen latent channels: the VAE's latent statistics are published per channel.
            "vae": dict(base_dim=4, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                        temperal_downsample=[False, True, True]),
            "scheduler": dict(prediction_type="flow_prediction", use_flow_sigmas=True,
                              flow_shift=3.0),
        },
        tiny_max_sequence_length=16,
    ),
    "hunyuanvideo": Family(
        name="hunyuanvideo",
        task="text-to-video",
        diffusers_pipeline="HunyuanVideoPipeline",
        xfuser_pipeline=None,
        xfuser_transformer=("xfuser.model_executor.models.transformers."
                            "transformer_hunyuan_video:xFuserHunyuanVideoTransformer3DWrapper"),
        components={
            "text_encoder": Component("llama", "LlamaModel", "tokenizer"),
            "text_encoder_2": Component("clip", "CLIPTextModel", "tokenizer_2"),
            "transformer": Component("transformer", "HunyuanVideoTransformer3DModel"),
            "vae": Component("vae", "AutoencoderKLHunyuanVideo"),
            "scheduler": Component("scheduler", "FlowMatchEulerDiscreteScheduler"),
        },
        spatial_factor=16,
        temporal_factor=4,
        vae_tiling=True,
        tiny={
            "text_encoder": dict(vocab_size=_TINY_VOCAB, hidden_size=32, intermediate_size=37,
                                 num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=512),
            "text_encoder_2": _TINY_CLIP,
            "transformer": dict(
                in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10,
                num_layers=1, num_single_layers=1, num_refiner_layers=1, patch_size=2,
                patch_size_t=1, text_embed_dim=32, pooled_projection_dim=32,
                rope_axes_dim=[2, 4, 4],
            ),
            "vae": dict(
                _TINY_VIDEO_VAE_BLOCKS, latent_channels=4, norm_num_groups=4,
                down_block_types=["HunyuanVideoDownBlock3D"] * 4,
                up_block_types=["HunyuanVideoUpBlock3D"] * 4,
            ),
            "scheduler": dict(shift=7.0),
        },
        tiny_max_sequence_length=16,
    ),
    "latte": Family(
        name="latte",
        task="text-to-video",
        diffusers_pipeline="LattePipeline",
        xfuser_pipeline="xFuserLattePipeline",
        components={
            "text_encoder": Component("t5", "T5EncoderModel", "tokenizer"),
            "transformer": Component("transformer", "LatteTransformer3DModel"),
            "vae": Component("vae", "AutoencoderKL"),
            "scheduler": Component("scheduler", "DDIMScheduler"),
        },
        spatial_factor=16,
        t5_slot="text_encoder",
        frames_argument="video_length",
        fixed_frames_key="video_length",
        # The pipeline's caption cleaning needs packages the benchmark does not otherwise use,
        # and it would change the prompts.
        call_kwargs=dict(clean_caption=False),
        tiny={
            "text_encoder": _TINY_T5,
            "transformer": dict(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                num_layers=1, cross_attention_dim=16, sample_size=8, patch_size=2,
                caption_channels=32, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
                activation_fn="gelu-approximate", attention_bias=True,
                norm_elementwise_affine=False, norm_eps=1e-6, video_length=16,
            ),
            "vae": dict(_TINY_VAE, latent_channels=4, scaling_factor=0.18215),
            "scheduler": dict(),
        },
    ),
}
