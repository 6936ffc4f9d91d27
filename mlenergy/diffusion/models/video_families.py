"""The text-to-video pipeline families (see `families.py` for what a family is)."""

from __future__ import annotations

from mlenergy.diffusion.models.family_spec import TINY_CLIP, TINY_T5, TINY_VOCAB, Component, Family

# Video VAEs: three spatial halvings (x8) and two temporal ones (x4).
_TINY_VIDEO_VAE_BLOCKS = dict(block_out_channels=[8, 8, 8, 8], layers_per_block=1)

VIDEO_FAMILIES: dict[str, Family] = {
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
        vae_slicing=True,
        tiny={
            "text_encoder": TINY_T5,
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
        fuses_qkv=True,
        components={
            "text_encoder": Component("umt5", "UMT5EncoderModel", "tokenizer"),
            "transformer": Component("transformer", "WanTransformer3DModel"),
            "vae": Component("vae", "AutoencoderKLWan"),
            "scheduler": Component("scheduler", "UniPCMultistepScheduler"),
        },
        spatial_factor=16,
        t5_slot="text_encoder",
        temporal_factor=4,
        vae_tiling=True,
        vae_slicing=True,
        flow_shift_key="flow_shift",
        tiny={
            "text_encoder": TINY_T5,
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
        vae_slicing=True,
        flow_shift_key="shift",
        tiny={
            "text_encoder": dict(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=37,
                                 num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=2, max_position_embeddings=512),
            "text_encoder_2": TINY_CLIP,
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
            # Stable Video Diffusion's temporal decoder, which Latte-1 ships and its authors
            # (and the ML.ENERGY v3 runs) decode with: a 2D encoder, a decoder with temporal
            # layers.
            "vae": Component("vae", "AutoencoderKLTemporalDecoder"),
            "scheduler": Component("scheduler", "DDIMScheduler"),
        },
        pretrained_subfolders={"vae": "vae_temporal_decoder"},
        spatial_factor=16,
        t5_slot="text_encoder",
        frames_argument="video_length",
        fixed_frames_key="video_length",
        # The pipeline's caption cleaning needs packages the benchmark does not otherwise use,
        # and it would change the prompts.
        call_kwargs=dict(clean_caption=False),
        tiny={
            "text_encoder": TINY_T5,
            "transformer": dict(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                num_layers=1, cross_attention_dim=16, sample_size=8, patch_size=2,
                caption_channels=32, norm_type="ada_norm_single", num_embeds_ada_norm=1000,
                activation_fn="gelu-approximate", attention_bias=True,
                norm_elementwise_affine=False, norm_eps=1e-6, video_length=16,
            ),
            # The temporal decoder's group norms take 32 groups: no narrower channels.
            "vae": dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
                        block_out_channels=[32, 32, 32, 32], layers_per_block=1,
                        latent_channels=4, sample_size=64, scaling_factor=0.18215),
            "scheduler": dict(),
        },
    ),
}
