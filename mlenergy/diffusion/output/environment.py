"""What the run ran on: package versions, devices, driver, power limits."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from importlib import metadata

import torch

from mlenergy.diffusion.results.sections import Section

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


@dataclass
class RunEnvironment(Section):
    """results.json `environment`: the host, its packages, and the run's GPUs on this node."""

    python: str
    # Version per package of PACKAGES; None when not installed.
    packages: dict[str, str | None]
    cuda: str | None
    cpu: str
    hostname: str
    # What the GPU access reports (probes/gpus.py describe): its driver, each GPU's index,
    # name, power limit and memory, and cuDNN's version; None and [] without GPUs.
    driver: str | None = None
    gpus: list[dict] = field(default_factory=list)
    cudnn: int | None = None

    @property
    def described_gpus(self) -> bool:
        return self.driver is not None

    def to_results(self) -> dict:
        out = super().to_results()
        if not self.described_gpus:  # cuDNN is reported with the GPUs only
            del out["cudnn"]
        return out

    @property
    def device_model(self) -> str:
        """The NVML name of the run's GPUs, or the CPU's model when there is no GPU."""
        names = sorted({g["name"] for g in self.gpus})
        return " + ".join(names) if names else self.cpu


def describe(gpus) -> RunEnvironment:
    """The host, its packages, and the run's GPUs on this node (probes.gpus.RunGpus)."""
    return RunEnvironment(python=platform.python_version(),
                          packages={name: _version(name) for name in PACKAGES},
                          cuda=torch.version.cuda, cpu=cpu_model(), hostname=platform.node(),
                          **(gpus.access.describe() if gpus.measures_energy else {}))
