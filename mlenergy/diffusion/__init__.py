"""Diffusion benchmark: latency and GPU energy of models that generate images and videos."""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"
