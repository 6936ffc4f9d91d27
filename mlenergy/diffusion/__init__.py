"""Diffusion benchmark: latency and GPU energy of text-to-image and text-to-video models."""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"
