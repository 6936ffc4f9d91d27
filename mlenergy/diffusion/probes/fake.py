"""Scripted GPUs: a stand-in for the devices behind Zeus and NVML, so that the real measurement
code runs end to end on a machine without GPUs (the test suite's way of checking the energy
path). Selected by MLENERGY_FAKE_GPUS=<script.json>; never used otherwise.

Each local GPU draws a constant power, so its energy counter reads
`start_j + power_w * (now - epoch)`; the expected joules of any window are power x its length.
The script (every key optional):

    {"power_w": [300.0, 310.0],    # per local GPU (a number: the same for all)
     "counter": "normal",          # "zero": the counter never moves; "nan": it reads NaN;
                                   # "wrap": it wraps to 0 at wrap_at_j
     "wrap_at_j": 1000.0,
     "timeline_scale": 1.0,        # the power timeline reports power x this
     "name": "Scripted GPU",
     "foreign_pids": [],           # other processes reported on every GPU
     "sync_delay_s": {"1": 0.3},   # per global rank: its device takes this long to drain at
                                   # every synchronisation (a slow rank, to show the barrier)
     "events": "/path/events.jsonl"}   # append one line per fence and window, with rank and time
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

from mlenergy.diffusion.probes.readings import (
    POWER_PERIOD_S,
    TEMPERATURE_PERIOD_S,
    WindowReading,
)

EPOCH_ENV = "MLENERGY_FAKE_GPUS_EPOCH"


class ScriptedAccess:
    def __init__(self, script: dict, count: int, rank: int):
        self.count = count
        self.rank = rank
        power = script.get("power_w", 300.0)
        self.power_w = [float(power)] * count if isinstance(power, (int, float)) else \
            [float(p) for p in power[:count]]
        if len(self.power_w) != count:
            raise ValueError(f"{len(self.power_w)} scripted power values for {count} GPUs")
        self.counter = script.get("counter", "normal")
        self.wrap_at_j = float(script.get("wrap_at_j", 1000.0))
        self.timeline_scale = float(script.get("timeline_scale", 1.0))
        self.name = script.get("name", "Scripted GPU")
        self.foreign_pids = list(script.get("foreign_pids", []))
        self.events = script.get("events")
        self.sync_delay_s = float(script.get("sync_delay_s", {}).get(str(rank), 0.0))
        # All ranks of a node must read the same counters: one epoch for the whole run.
        self.epoch = float(os.environ.get(EPOCH_ENV) or script.get("epoch") or 0.0)

    @classmethod
    def from_file(cls, path: str, ranks) -> ScriptedAccess:
        return cls(json.loads(Path(path).read_text()), ranks.local_world_size, ranks.rank)

    # -- what the probes call ----------------------------------------------------------------
    def synchronize(self, device) -> None:
        # Logged once the device has drained: the time its queued work was done.
        time.sleep(self.sync_delay_s)
        self._event("sync")

    def fenced(self) -> None:
        self._event("fenced")

    def energy_monitor(self):
        return _Windows(self)

    def read_counters(self):
        now = time.time()
        return ({i: self.counter_j(i, now) for i in range(self.count)},
                {i: self.power_w[i] for i in range(self.count)})

    def timeline_monitors(self):
        return _Timelines(self)

    def nvml_energy(self):
        now = time.time()
        return {i: self.counter_j(i, now) for i in range(self.count)}

    def compute_processes(self):
        # The process that asks holds a context on its GPU, as a rank does on a real one.
        return {i: ([os.getpid()] if i == 0 else []) + list(self.foreign_pids)
                for i in range(self.count)}

    def describe(self) -> dict:
        return {"driver": "scripted", "cudnn": None,
                "gpus": [{"index": i, "name": self.name, "power_limit_w": 700.0,
                          "memory_gb": 80.0} for i in range(self.count)]}

    # -- the script --------------------------------------------------------------------------
    def counter_j(self, gpu: int, now: float) -> float:
        if self.counter == "nan":
            return math.nan
        if self.counter == "zero":
            return 1000.0
        energy = self.power_w[gpu] * (now - self.epoch)
        return energy % self.wrap_at_j if self.counter == "wrap" else energy

    def _event(self, kind: str, name: str | None = None) -> None:
        if not self.events:
            return
        line = json.dumps({"rank": self.rank, "event": kind, "name": name, "time": time.time()})
        with open(self.events, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class _Windows:
    def __init__(self, access: ScriptedAccess):
        self._access = access
        self._open: dict[str, tuple[float, dict[int, float]]] = {}

    def begin(self, name: str) -> None:
        now = time.time()
        self._access._event("begin", name)
        self._open[name] = (now, {i: self._access.counter_j(i, now)
                                  for i in range(self._access.count)})

    def end(self, name: str) -> WindowReading:
        now = time.time()
        self._access._event("end", name)
        start, before = self._open.pop(name)
        energy = {i: self._access.counter_j(i, now) - before[i] for i in before}
        return WindowReading(time=now - start, gpu_energy=energy)


class _Timelines:
    """Samples taken on demand: the constant scripted power at the monitors' periods."""

    def __init__(self, access: ScriptedAccess):
        self._access = access
        self._start = time.time()

    def _times(self, period: float, start: float | None, end: float) -> list[float]:
        first = self._start
        n = int((end - first) / period) + 1
        times = [first + k * period for k in range(max(n, 0))]
        return [t for t in times if start is None or t >= start]

    def power(self, start, end):
        a = self._access
        series = {i: [(t, a.power_w[i] * a.timeline_scale)
                      for t in self._times(POWER_PERIOD_S, start, end)] for i in range(a.count)}
        return {"device_instant": series}

    def temperature(self, start, end):
        return {i: [(t, 40.0) for t in self._times(TEMPERATURE_PERIOD_S, start, end)]
                for i in range(self._access.count)}

    def stop(self) -> None:
        pass
