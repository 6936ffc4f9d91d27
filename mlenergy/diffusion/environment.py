"""What the run ran on: package versions, devices, driver, power limits."""

from __future__ import annotations

import platform
from importlib import metadata

import torch

PACKAGES = ("torch", "diffusers", "xfuser", "zeus", "transformers", "yunchang", "flash-attn")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(gpus) -> dict:
    """The host, its packages, and the run's GPUs on this node (probes.gpus.RunGpus)."""
    env = {
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda,
        "cpu": cpu_model(),
        "hostname": platform.node(),
        "driver": None,
        "gpus": [],
    }
    if gpus.measures_energy:
        env.update(gpus.access.describe())
    return env


def device_model(env: dict) -> str:
    """The NVML name of the run's GPUs, or the CPU's model when there is no GPU."""
    names = sorted({g["name"] for g in env["gpus"]})
    return " + ".join(names) if names else env["cpu"]
