"""Pipeline families: how a diffusers pipeline of each kind is put together and run by xDiT.

A family knows its classes, the components it needs, its spatial factor and what xDiT can do
with it. Model-specific numbers (layer counts, widths, default steps) live in `registry.py`.
The tiny variant of each family is here because it is the same for every model of the family:
a few layers, a few channels, random weights, built in milliseconds on a CPU. The image
families are in this module, the video families in `video_families.py`; `FAMILIES` holds both.
"""

from __future__ import annotations

from mlenergy.diffusion.models.family_spec import (
    AT_REQUESTED_SIZE, Component, ComponentKind, Family, TINY_CLIP, TINY_T5, TINY_VAE, TINY_VOCAB,
    Task,
)
from mlenergy.diffusion.models.video_families import VIDEO_FAMILIES

IMAGE_FAMILIES: dict[str, Family] = {
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
        fuses_qkv=True,
        tiny={
            "text_encoder": TINY_CLIP,
            "text_encoder_2": TINY_T5,
            "transformer": dict(
                patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=[4, 4, 8],
            ),
            "vae": dict(TINY_VAE, latent_channels=4, use_quant_conv=False,
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
        call_kwargs=AT_REQUESTED_SIZE,
        tiny={
            "text_encoder": TINY_T5,
            "transformer": dict(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                num_layers=2, cross_attention_dim=16, sample_size=8, patch_size=2,
                caption_channels=32, norm_num_groups=4, use_additional_conditions=False,
            ),
            "vae": dict(TINY_VAE, latent_channels=4, scaling_factor=0.13025),
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
        call_kwargs=AT_REQUESTED_SIZE,
        tiny={
            "text_encoder": TINY_T5,
            "transformer": dict(
                # Width divisible by 3: the size conditions split it in three.
                num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8,
                # The pipeline adds PixArt-alpha's size conditions only for sample size 128.
                num_layers=2, cross_attention_dim=24, sample_size=128, patch_size=2,
                caption_channels=32, norm_num_groups=4, use_additional_conditions=True,
            ),
            "vae": dict(TINY_VAE, latent_channels=4, scaling_factor=0.18215),
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
        flow_shift_key="shift",
        tiny={
            "text_encoder": TINY_CLIP,
            "text_encoder_2": TINY_CLIP,
            # T5 must be at least as wide as the two CLIP widths together (the pipeline pads to it).
            "text_encoder_3": dict(TINY_T5, d_model=64),
            "transformer": dict(
                sample_size=16, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                num_attention_heads=2, joint_attention_dim=64, caption_projection_dim=16,
                pooled_projection_dim=64, out_channels=4, pos_embed_max_size=64,
            ),
            "vae": dict(TINY_VAE, latent_channels=4, use_quant_conv=False,
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
        call_kwargs=AT_REQUESTED_SIZE,
        tiny={
            "text_encoder": dict(vocab_size=TINY_VOCAB, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=37,
                                 max_position_embeddings=77),
            "text_encoder_2": TINY_T5,
            "transformer": dict(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, patch_size=2,
                sample_size=8, hidden_size=16, num_layers=2, mlp_ratio=2.0, learn_sigma=True,
                cross_attention_dim=32, cross_attention_dim_t5=32, pooled_projection_dim=16,
                # The pipeline pads T5 to 256 tokens whatever the model size.
                text_len=77, text_len_t5=256, use_style_cond_and_image_meta_size=False,
            ),
            "vae": dict(TINY_VAE, latent_channels=4, scaling_factor=0.13025),
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
            "text_encoder": TINY_CLIP,
            "text_encoder_2": TINY_CLIP,
            "unet": dict(
                sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
                block_out_channels=[16, 32], down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"], attention_head_dim=[2, 4],
                cross_attention_dim=64, norm_num_groups=8, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=8,
                projection_class_embeddings_input_dim=80, transformer_layers_per_block=[1, 1],
            ),
            "vae": dict(TINY_VAE, latent_channels=4, scaling_factor=0.13025),
            "scheduler": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              steps_offset=1, timestep_spacing="leading"),
        },
    ),
    "sana": Family(
        name="sana",
        task="text-to-image",
        diffusers_pipeline="SanaPipeline",
        xfuser_pipeline="xFuserSanaPipeline",
        components={
            "text_encoder": Component("gemma2", "Gemma2Model", "tokenizer"),
            "transformer": Component("transformer", "SanaTransformer2DModel"),
            "vae": Component("vae", "AutoencoderDC"),
            "scheduler": Component("scheduler", "DPMSolverMultistepScheduler"),
        },
        # DC-AE compresses 32x and the transformer's patch size is 1.
        spatial_factor=32,
        flow_shift_key="flow_shift",
        call_kwargs=AT_REQUESTED_SIZE,
        tiny={
            "text_encoder": dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=37,
                                 num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=8, max_position_embeddings=2048),
            "transformer": dict(
                in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
                num_layers=2, num_cross_attention_heads=2, cross_attention_head_dim=8,
                cross_attention_dim=16, caption_channels=32, mlp_ratio=2.5, sample_size=32,
                patch_size=1, norm_elementwise_affine=False, norm_eps=1e-6,
                qk_norm="rms_norm_across_heads",
            ),
            # Six stages, as the real DC-AE: a compression of 32.
            "vae": dict(
                in_channels=3, latent_channels=4, attention_head_dim=4,
                encoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
                decoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
                encoder_block_out_channels=[4, 4, 8, 8, 8, 8],
                decoder_block_out_channels=[4, 4, 8, 8, 8, 8],
                encoder_layers_per_block=[1] * 6, decoder_layers_per_block=[1] * 6,
                encoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
                decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
                upsample_block_type="interpolate", downsample_block_type="Conv",
                decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=0.41407,
            ),
            "scheduler": dict(flow_shift=3.0, use_flow_sigmas=True,
                              prediction_type="flow_prediction"),
        },
        tiny_max_sequence_length=16,
    ),
}

FAMILIES: dict[str, Family] = {**IMAGE_FAMILIES, **VIDEO_FAMILIES}
