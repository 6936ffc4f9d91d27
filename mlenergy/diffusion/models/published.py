"""Component configs as their models publish them (values of each checkpoint's `config.json`):
the text encoders, VAEs, denoisers and schedulers that several rows of the registry share."""

from __future__ import annotations

# Text encoders, as published.
CLIP_L = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
    num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
)
CLIP_G = dict(
    vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
    num_attention_heads=20, max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
)
T5_XXL = dict(
    vocab_size=32128, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, layer_norm_epsilon=1e-6,
)
MT5_XL = dict(
    vocab_size=250112, d_model=2048, d_ff=5120, d_kv=64, num_layers=24, num_heads=32,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, layer_norm_epsilon=1e-6,
)
UMT5_XXL = dict(
    vocab_size=256384, d_model=4096, d_ff=10240, d_kv=64, num_layers=24, num_heads=64,
    feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, layer_norm_epsilon=1e-6,
)
# HunyuanVideo's text encoder: the language model of LLaVA-LLaMA-3-8B.
LLAVA_LLAMA3_8B = dict(
    vocab_size=128320, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, rms_norm_eps=1e-5, rope_theta=500000.0,
    max_position_embeddings=8192,
)
HUNYUAN_BERT = dict(
    vocab_size=47020, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
    num_attention_heads=16, max_position_embeddings=512,
)

# VAEs, as published.
_VAE_BASE = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, norm_num_groups=32,
    sample_size=1024,
)
VAE_FLUX = dict(_VAE_BASE, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
VAE_SD3 = dict(_VAE_BASE, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
               use_quant_conv=False, use_post_quant_conv=False)
VAE_SDXL = dict(_VAE_BASE, latent_channels=4, scaling_factor=0.13025)
VAE_SD = dict(_VAE_BASE, latent_channels=4, scaling_factor=0.18215, sample_size=512)
# SANA's text encoder: the decoder of Gemma 2 2B (Efficient-Large-Model/gemma-2-2b-it).
GEMMA2_2B = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
    num_attention_heads=8, num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
    rms_norm_eps=1e-6, rope_theta=10000.0, hidden_activation="gelu_pytorch_tanh",
    query_pre_attn_scalar=256, sliding_window=4096, attn_logit_softcapping=50.0,
    final_logit_softcapping=30.0,
)
# SANA 1.5's VAE: DC-AE f32c32 (mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers).
DC_AE_F32C32 = dict(
    in_channels=3, latent_channels=32, attention_head_dim=32,
    encoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    decoder_block_types=["ResBlock"] * 3 + ["EfficientViTBlock"] * 3,
    encoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
    decoder_block_out_channels=[128, 256, 512, 512, 1024, 1024],
    encoder_layers_per_block=[2, 2, 2, 3, 3, 3], decoder_layers_per_block=[3, 3, 3, 3, 3, 3],
    encoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    decoder_qkv_multiscales=[[], [], [], [5], [5], [5]],
    upsample_block_type="interpolate", downsample_block_type="Conv",
    decoder_norm_types="rms_norm", decoder_act_fns="silu", encoder_out_shortcut=True,
    decoder_in_shortcut=True, decoder_conv_act_fn="relu", scaling_factor=0.41407,
)
# Latte-1's `vae_temporal_decoder`: Stable Video Diffusion's VAE with a temporal decoder.
VAE_SVD_TEMPORAL_DECODER = dict(
    in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
    block_out_channels=[128, 256, 512, 512], layers_per_block=2, latent_channels=4,
    sample_size=768, scaling_factor=0.18215,
)

# Denoisers and schedulers shared by several rows of the registry.
PIXART_XL_1024 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    cross_attention_dim=1152, sample_size=128, patch_size=2, caption_channels=4096,
    norm_type="ada_norm_single", num_embeds_ada_norm=1000, norm_elementwise_affine=False,
    norm_eps=1e-6, attention_bias=True, activation_fn="gelu-approximate",
)
SD3_SCHEDULER = dict(shift=3.0)
SANA15_TRANSFORMER = dict(
    in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32,
    num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
    caption_channels=2304, mlp_ratio=2.5, attention_bias=False, sample_size=32, patch_size=1,
    norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None,
    qk_norm="rms_norm_across_heads",
)
# Flow-DPM-Solver: DPM-Solver++ over flow-matching sigmas, shift 3 (at 1024 px).
SANA_SCHEDULER = dict(flow_shift=3.0, use_flow_sigmas=True, prediction_type="flow_prediction")
SDXL_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                       steps_offset=1, timestep_spacing="leading")

COGVIDEOX_DDIM = dict(
    beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False,
    num_train_timesteps=1000, prediction_type="v_prediction", rescale_betas_zero_snr=True,
    set_alpha_to_one=True, snr_shift_scale=3.0, steps_offset=0, timestep_spacing="trailing",
)
WAN_TRANSFORMER = dict(
    patch_size=[1, 2, 2], attention_head_dim=128, in_channels=16, out_channels=16, text_dim=4096,
    freq_dim=256, cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6,
    rope_max_seq_len=1024,
)
# Wan 2.1's published sampler at 480p: UniPC over flow-matching sigmas, shift 3.
WAN_SCHEDULER = dict(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                      num_train_timesteps=1000)
WAN_VAE = dict(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                temperal_downsample=[False, True, True])
