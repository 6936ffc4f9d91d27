"""What the devices report, in the shapes every device access returns."""

from __future__ import annotations

from dataclasses import dataclass

# Sampling periods of the power and temperature timelines.
POWER_PERIOD_S = 0.1
TEMPERATURE_PERIOD_S = 0.5


@dataclass
class WindowReading:
    """What an energy window read on one node: seconds, joules per local GPU, host energy."""

    time: float
    gpu_energy: dict[int, float]
    cpu_energy: dict | None = None
    dram_energy: dict | None = None
