"""What a pipeline family is: its slots and classes, and the sizes its tiny variants share.

`families.py` and `video_families.py` fill these in for every family; model-specific numbers
(layer counts, widths, default steps) live in `registry.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from mlenergy.diffusion.inputs.task import TaskName

Task = TaskName

# Component kinds. Text encoders name the tokenizer family they pair with; `pipelines.py`
# builds each kind from a config mapping.
ComponentKind = Literal[
    "clip", "clip_with_projection", "t5", "umt5", "bert", "llama", "gemma2", "vae",
    "transformer", "unet", "scheduler",
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
    # Its attention layers fuse Q, K and V into one projection (diffusers' fuse_projections,
    # which xDiT's processors for it follow): --fuse_qkv applies.
    fuses_qkv: bool = False
    # "module:Class" of xDiT's transformer, for families without an xDiT pipeline class.
    xfuser_transformer: str | None = None
    # Video: pixels-to-latent frame compression (frame counts must be 1 + k x this), the call
    # argument that takes the frame count, and the denoiser config key that fixes the frame
    # count, for models trained at one length only.
    temporal_factor: int = 1
    frames_argument: str = "num_frames"
    fixed_frames_key: str | None = None
    # Decode in tiles, and one video at a time: the full-resolution video VAEs do not fit in GPU
    # memory otherwise (and the ML.ENERGY v3 runs decoded this way).
    vae_tiling: bool = False
    vae_slicing: bool = False
    # The scheduler config key that `--workload.flow_shift` sets; None where the scheduler has
    # no fixed flow shift (not flow matching, or shifted by resolution).
    flow_shift_key: str | None = None
    # Slots a pretrained checkpoint holds in another subfolder than the slot's name.
    pretrained_subfolders: Mapping[str, str] = field(default_factory=dict)
    # Extra keyword arguments the diffusers pipeline constructor needs beyond its components.
    pipeline_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Extra keyword arguments of every pipeline call.
    call_kwargs: Mapping[str, Any] = field(default_factory=dict)
    # Tiny variant: slot -> config kwargs, and the T5 length to use with it.
    tiny: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    tiny_max_sequence_length: int | None = None


# Sizes shared by the tiny text encoders. The in-memory tokenizers have fewer than 64 entries.
TINY_VOCAB = 64
TINY_CLIP = dict(
    vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
)
TINY_T5 = dict(vocab_size=TINY_VOCAB, d_model=32, d_ff=37, d_kv=8, num_layers=2, num_heads=4)
# Four down blocks: a VAE scale factor of 8, as every real model here has (HunyuanDiT's RoPE
# assumes it).
TINY_VAE = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[8, 8, 8, 8], layers_per_block=1, norm_num_groups=4, sample_size=64,
)

# Generate at the requested size, not at the nearest of the model's aspect-ratio bins.
AT_REQUESTED_SIZE = dict(use_resolution_binning=False)
