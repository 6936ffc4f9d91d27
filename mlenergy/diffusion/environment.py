"""What the run ran on: package versions, devices, driver, power limits."""

from __future__ import annotations

import os
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


def local_gpus(count: int) -> list[dict]:
    """NVML facts of the first `count` visible GPUs (the ones this node's ranks use)."""
    import pynvml

    pynvml.nvmlInit()
    try:
        gpus = []
        for index in range(count):
            handle = nvml_handle(pynvml, index)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append({
                "index": index,
                "name": name.decode() if isinstance(name, bytes) else name,
                "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
                "memory_gb": pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1e9,
            })
        return gpus
    finally:
        pynvml.nvmlShutdown()


def nvml_handle(pynvml, index: int):
    """NVML numbers GPUs regardless of CUDA_VISIBLE_DEVICES: find torch's device by PCI bus."""
    try:
        props = torch.cuda.get_device_properties(index)
        bus = f"{props.pci_domain_id:08X}:{props.pci_bus_id:02X}:{props.pci_device_id:02X}.0"
        return pynvml.nvmlDeviceGetHandleByPciBusId(bus)
    except (AttributeError, pynvml.NVMLError):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible:
            return pynvml.nvmlDeviceGetHandleByIndex(int(visible.split(",")[index]))
        return pynvml.nvmlDeviceGetHandleByIndex(index)


def driver_version() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            v = pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else v
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        return None


def describe(device_type: str, gpus_per_node: int) -> dict:
    env = {
        "python": platform.python_version(),
        "packages": {name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda,
        "cpu": cpu_model(),
        "hostname": platform.node(),
    }
    if device_type == "cuda":
        env["driver"] = driver_version()
        env["gpus"] = local_gpus(gpus_per_node)
        env["cudnn"] = torch.backends.cudnn.version()
    else:
        env["driver"] = None
        env["gpus"] = []
    return env


def device_model(env: dict) -> str:
    """The NVML name of the run's GPUs, or the CPU's model when there is no GPU."""
    names = sorted({g["name"] for g in env["gpus"]})
    return " + ".join(names) if names else env["cpu"]
