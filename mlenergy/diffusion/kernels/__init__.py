"""What a denoiser's layers compute with, and whether this machine has it: attention kernels
(FlashAttention-3) and FP8 linear layers."""
