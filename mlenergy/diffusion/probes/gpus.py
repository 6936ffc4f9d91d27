"""The run's GPUs, and the one place the probes reach them.

`RunGpus` owns the mapping every probe needs: which local devices this node's ranks use (indices
relative to CUDA_VISIBLE_DEVICES, as Zeus and torch count them) and the keys results use for them
(the global index, node rank x GPUs per node + local index, as strings). Every probe reads the
devices through its `access`, an object with the methods of `NvidiaAccess`:

- `NvidiaAccess`: the real devices, through Zeus (energy windows, counters, power and temperature
  monitors) and NVML (independent counter reads, compute processes, device facts);
- `probes.fake.ScriptedAccess`: scripted devices for tests (MLENERGY_FAKE_GPUS names its script),
  so the measurement code runs end to end on machines without GPUs.

On a machine without GPUs and without a script there is no access: energy is unmeasured.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any

import torch

from mlenergy.diffusion.probes.readings import POWER_PERIOD_S, TEMPERATURE_PERIOD_S, WindowReading
from mlenergy.diffusion.process import runtime

logger = logging.getLogger("mlenergy.diffusion")

FAKE_GPUS_ENV = "MLENERGY_FAKE_GPUS"


class RunGpus:
    def __init__(self, ranks: runtime.Ranks, access: Any | None):
        self.ranks = ranks
        self.access = access
        self.count = ranks.local_world_size if access is not None else 0
        self.offset = ranks.node_rank * ranks.local_world_size

    @classmethod
    def for_ranks(cls, ranks: runtime.Ranks) -> RunGpus:
        script = os.environ.get(FAKE_GPUS_ENV)
        if script:
            from mlenergy.diffusion.probes.fake import ScriptedAccess

            return cls(ranks, ScriptedAccess.from_file(script, ranks))
        if ranks.device.type == "cuda":
            return cls(ranks, NvidiaAccess(ranks.local_world_size))
        return cls(ranks, None)

    @property
    def measures_energy(self) -> bool:
        return self.access is not None

    @property
    def total(self) -> int:
        """GPUs of the whole run, every node's."""
        return self.count * self.ranks.num_nodes

    @property
    def local_indices(self) -> list[int]:
        return list(range(self.count))

    def key(self, local_index: int) -> str:
        return str(self.offset + local_index)

    def keyed(self, per_local: dict[int, Any]) -> dict[str, Any]:
        return {self.key(int(i)): v for i, v in per_local.items()}

    def fence(self) -> None:
        """Every rank: its device's queued work done, then every rank here. A window opened or
        closed after this holds all of the work of all ranks before it, and none after."""
        if self.access is not None:
            self.access.synchronize(self.ranks.device)
        else:
            runtime.synchronize(self.ranks.device)
        runtime.barrier()
        if self.access is not None:
            self.access.fenced()


class NvidiaAccess:
    """NVIDIA GPUs through Zeus and NVML; indices are local (CUDA_VISIBLE_DEVICES order)."""

    def __init__(self, count: int):
        self.count = count
        self._zeus_gpus = None

    # -- fences and windows ----------------------------------------------------------------
    def synchronize(self, device: torch.device) -> None:
        runtime.synchronize(device)

    def fenced(self) -> None:
        pass

    def energy_monitor(self):
        from zeus.monitor import ZeusMonitor

        # Windows are synchronised by the caller, on every rank, not by Zeus on one.
        return _ZeusWindows(ZeusMonitor(gpu_indices=list(range(self.count)),
                                        approx_instant_energy=False))

    def read_counters(self) -> tuple[dict[int, float], dict[int, float] | None]:
        """(cumulative energy in J, instantaneous power in W) per local GPU."""
        if self._zeus_gpus is None:
            from zeus.device import get_gpus

            self._zeus_gpus = get_gpus()
        energy, power = {}, {}
        for i in range(self.count):
            energy[i] = self._zeus_gpus.get_total_energy_consumption(i) / 1000.0
            try:
                power[i] = self._zeus_gpus.get_instant_power_usage(i) / 1000.0
            except Exception:  # noqa: BLE001 - only the short-window fallback needs it
                pass
        return energy, power if len(power) == self.count else None

    def timeline_monitors(self):
        from zeus.monitor.power import PowerMonitor
        from zeus.monitor.temperature import TemperatureMonitor

        gpus = list(range(self.count))
        with _spawned_pollers_bound_to_this_rank():
            power = PowerMonitor(gpu_indices=gpus, update_period=POWER_PERIOD_S)
            try:
                temperature = TemperatureMonitor(gpu_indices=gpus,
                                                 update_period=TEMPERATURE_PERIOD_S)
            except Exception:
                power.stop()
                raise
        return _ZeusTimelines(power, temperature)

    # -- NVML directly ---------------------------------------------------------------------
    def nvml_energy(self) -> dict[int, float] | None:
        """NVML's total-energy counter (J), read directly (not via Zeus)."""
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception:  # noqa: BLE001 - no NVML: nothing to cross-check
            return None
        try:
            return {i: pynvml.nvmlDeviceGetTotalEnergyConsumption(_handle(pynvml, i)) / 1000.0
                    for i in range(self.count)}
        except pynvml.NVMLError as err:
            logger.warning("NVML energy counter unreadable (%s): no independent cross-check", err)
            return None
        finally:
            pynvml.nvmlShutdown()

    def compute_processes(self) -> dict[int, list[int]]:
        import pynvml

        pynvml.nvmlInit()
        try:
            return {i: [p.pid for p in pynvml.nvmlDeviceGetComputeRunningProcesses(
                _handle(pynvml, i))] for i in range(self.count)}
        finally:
            pynvml.nvmlShutdown()

    def describe(self) -> dict:
        import pynvml

        pynvml.nvmlInit()
        try:
            gpus = []
            for index in range(self.count):
                handle = _handle(pynvml, index)
                gpus.append({
                    "index": index,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "power_limit_w": pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
                    "memory_gb": pynvml.nvmlDeviceGetMemoryInfo(handle).total / 1e9,
                })
            return {"driver": _text(pynvml.nvmlSystemGetDriverVersion()), "gpus": gpus,
                    "cudnn": torch.backends.cudnn.version()}
        finally:
            pynvml.nvmlShutdown()


class _ZeusWindows:
    def __init__(self, monitor):
        self._monitor = monitor

    def begin(self, name: str) -> None:
        self._monitor.begin_window(name, sync_execution=False)

    def end(self, name: str) -> WindowReading:
        m = self._monitor.end_window(name, sync_execution=False)
        return WindowReading(time=float(m.time), gpu_energy=dict(m.gpu_energy),
                             cpu_energy=m.cpu_energy, dram_energy=m.dram_energy)


class _ZeusTimelines:
    def __init__(self, power, temperature):
        self._power, self._temperature = power, temperature

    def power(self, start: float | None, end: float) -> dict[str, dict[int, list]]:
        return self._power.get_all_power_timelines(start_time=start, end_time=end)

    def temperature(self, start: float | None, end: float) -> dict[int, list]:
        return self._temperature.get_temperature_timeline(start_time=start, end_time=end)

    def stop(self) -> None:
        self._power.stop()
        self._temperature.stop()


@contextlib.contextmanager
def _spawned_pollers_bound_to_this_rank():
    """Zeus polls in processes started by `spawn`, which import the parent's main module first
    (the benchmark: torch and all, about 10 s on a GPU host, measured) although their work needs
    only Zeus. While they start, the main module is named as `process.monitor_child` instead,
    which `spawn` runs in its place: it ends each poller when this rank ends, however it ends."""
    import importlib.util

    from mlenergy.diffusion.process import monitor_child

    main = sys.modules.get("__main__")
    saved = {name: main.__dict__[name] for name in ("__spec__", "__file__")
             if main is not None and name in main.__dict__}
    saved_env = os.environ.get(monitor_child.PARENT_ENV)
    try:
        if main is not None:
            main.__spec__ = importlib.util.find_spec(monitor_child.__name__)
            main.__dict__.pop("__file__", None)
        os.environ[monitor_child.PARENT_ENV] = str(os.getpid())
        yield
    finally:
        if main is not None:
            main.__dict__.update(saved)
            if "__spec__" not in saved:
                main.__dict__.pop("__spec__", None)
        if saved_env is None:
            os.environ.pop(monitor_child.PARENT_ENV, None)
        else:
            os.environ[monitor_child.PARENT_ENV] = saved_env


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _handle(pynvml, index: int):
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

