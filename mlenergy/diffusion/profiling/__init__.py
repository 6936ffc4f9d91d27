"""Research: where a GPU's denoising time and energy go while it waits (torch.profiler,
communication and idle shares)."""
