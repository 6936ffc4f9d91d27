"""Diffusion benchmark: latency and GPU energy of text-to-image and text-to-video models."""
