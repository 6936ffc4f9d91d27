"""Where an iteration's time and energy go: text encoding, denoising, decoding, and each step.

Module hooks that every diffusers pipeline already offers mark the stages, so no pipeline code is
copied: forward pre/post hooks on each text encoder, a forward pre-hook on the denoiser
(`transformer`, `transformer_2` or `unet`) and pre/post hooks on the VAE's decoder. A stage
boundary is a fence (device sync, and a barrier when every rank provably reaches the same
boundaries) followed, on local rank 0, by a read of the GPUs' energy counters.

- text encoding: from the first text-encoder call to the end of the last one before denoising
  (the tokenising between encoders included);
- denoising: from the first denoiser forward to the first decoder forward (so it holds the
  scheduler steps and the gathering of the latents);
- decoding: from the first decoder forward to the end of the last;
- remainder: the iteration's window minus the three (the first tokenising, latent set-up, image
  post-processing, the fences themselves).

A stage's energy is the counter's difference over its window; a window too short for the counter
to move (text encoding can take milliseconds) falls back to instantaneous power x time, and says
so in `energy_method`.

Steps are timed without fences (CUDA events on a GPU), so they do not disturb the run: from the
step-end callback where the pipeline calls it once per step, else from the denoiser's forwards
grouped per step (classifier-free guidance may call it more than once a step).
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results import stats

logger = logging.getLogger("mlenergy.diffusion")

STAGES = ("text_encoding", "denoising", "decoding")
DENOISER_SLOTS = ("transformer", "transformer_2", "unet")

FENCE_COLLECTIVE = "sync+barrier"
FENCE_LOCAL = "local-sync"


def pipeline_parts(pipeline) -> dict[str, list[torch.nn.Module]]:
    """The text encoders, denoisers and VAE decoder of a (possibly xFuser-wrapped) pipeline."""
    inner = getattr(pipeline, "module", pipeline)
    names = list(getattr(inner, "components", {}) or {})
    modules = {name: getattr(inner, name, None) for name in names}
    modules = {n: m for n, m in modules.items() if isinstance(m, torch.nn.Module)}
    vae = modules.get("vae")
    decoder = getattr(vae, "decoder", None) if vae is not None else None
    return {
        "text_encoding": [m for n, m in modules.items() if n.startswith("text_encoder")],
        "denoising": [modules[n] for n in DENOISER_SLOTS if n in modules],
        "decoding": [decoder if isinstance(decoder, torch.nn.Module) else vae] if vae is not None else [],
    }


class EnergyCounters:
    """Cumulative energy counters (J) of all of this node's run GPUs, readable from any rank.

    Every rank reads them, because a stage may run on some ranks only (xDiT decodes on the last
    rank): the rank that runs a stage reads its boundaries. None on machines without GPUs."""

    def __init__(self, gpus):
        self._gpus = gpus

    def read(self) -> tuple[dict[str, float], dict[str, float] | None] | tuple[None, None]:
        """(cumulative energy in J, instantaneous power in W) per GPU."""
        if not self._gpus.measures_energy:
            return None, None
        energy, power = self._gpus.access.read_counters()
        return self._gpus.keyed(energy), (self._gpus.keyed(power) if power else None)


def energy_between(before: dict[str, float] | None, after: dict[str, float] | None):
    """Per-GPU joules between two counter reads; None when unmeasured or when any GPU's counter
    did not move (a window shorter than the counter's update period is not a measurement)."""
    if before is None or after is None:
        return None
    diff = {k: after[k] - before[k] for k in after}
    if any(not math.isfinite(j) or j <= 0 for j in diff.values()):
        return None
    return diff


def window_energy(start: "_Mark", end: "_Mark") -> tuple[dict | None, str | None]:
    """A stage window's per-GPU joules and how they were obtained: the energy counter, or, for a
    window too short for the counter to move, the mean of the instantaneous power at its two ends
    times its length (Zeus's `approx_instant_energy` does the same)."""
    counted = energy_between(start.energy, end.energy)
    if counted is not None:
        return counted, "counter"
    if start.power and end.power and end.wall > start.wall:
        seconds = end.wall - start.wall
        return ({k: (start.power[k] + end.power[k]) / 2 * seconds for k in end.power},
                "instant power x time")
    return None, None


@dataclass
class _Mark:
    wall: float
    energy: dict[str, float] | None
    power: dict[str, float] | None = None


@dataclass
class _Iteration:
    start_wall: float = 0.0
    end_wall: float = 0.0
    text_start: _Mark | None = None
    text_end: _Mark | None = None
    text_calls: int = 0
    denoise_start: _Mark | None = None
    decode_start: _Mark | None = None
    decode_end: _Mark | None = None
    decoder_calls: int = 0
    step_marks: list[Any] = field(default_factory=list)  # step-end callback marks
    forward_marks: list[Any] = field(default_factory=list)  # denoiser forward starts
    decode_clock: Any = None
    reference_clock: Any = None
    events: list[str] = field(default_factory=list)


class _Clock:
    """Unfenced timestamps: CUDA events on a GPU (read after the iteration's closing fence),
    wall time on a CPU (where execution is synchronous)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        if self.cuda:
            return start.elapsed_time(end) / 1000.0
        return end - start


class StageRecorder:
    """Hooks a pipeline's parts and turns each measured iteration into a stage record."""

    def __init__(self, pipeline, gpus, inference_steps: int):
        self.ranks = ranks = gpus.ranks
        self.inference_steps = inference_steps
        self.parts = pipeline_parts(pipeline)
        self.counters = EnergyCounters(gpus)
        self.fence_mode = FENCE_LOCAL
        self.active = False
        self.first_denoiser_call: tuple[tuple, dict] | None = None
        self._clock = _Clock(ranks.device)
        self._it: _Iteration | None = None
        self._handles = []
        self._last_events: tuple[str, ...] = ()
        self.accepts_step_callback = _accepts(pipeline, "callback_on_step_end")
        # Told of each step end ("step") and denoiser forward ("forward"): the progress line.
        self.on_event = lambda kind: None
        for module in self.parts["text_encoding"]:
            self._handles.append(module.register_forward_pre_hook(self._text_pre))
            self._handles.append(module.register_forward_hook(self._text_post))
        for module in self.parts["denoising"]:
            self._handles.append(module.register_forward_pre_hook(self._denoiser_pre,
                                                                  with_kwargs=True))
        for module in self.parts["decoding"]:
            self._handles.append(module.register_forward_pre_hook(self._decoder_pre))
            self._handles.append(module.register_forward_hook(self._decoder_post))

    def describe(self) -> str:
        return ", ".join(f"{stage}: {len(mods)} module(s)" for stage, mods in self.parts.items())

    # The iteration's own window is fenced by the energy meter: no fence here.
    def begin_iteration(self) -> None:
        self._it = _Iteration(start_wall=time.time())
        self.active = True

    def end_iteration(self) -> _Iteration:
        """Called after the iteration's closing fence, so every CUDA event has completed."""
        self.active = False
        it, self._it = self._it, None
        it.end_wall = time.time()
        self._last_events = tuple(it.events)
        return it

    def call_kwargs(self) -> dict:
        """Extra pipeline-call arguments: the step-end callback, where the pipeline takes one."""
        return {"callback_on_step_end": self._step_end} if self.accepts_step_callback else {}

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def settle_fencing(self) -> str:
        """After warm-up: fence with a barrier only if every rank went through the same stage
        boundaries, so that a barrier inside a hook can never wait for a rank that does not come.
        Otherwise (or with no warm-up to learn from) each rank synchronises only its own
        device."""
        signature = self._last_events
        signatures = runtime.all_gather_object(signature)
        same = bool(signature) and all(s == signature for s in signatures)
        self.fence_mode = FENCE_COLLECTIVE if same else FENCE_LOCAL
        return self.fence_mode

    # --- hooks -----------------------------------------------------------------------------
    def _boundary(self, event: str) -> _Mark:
        self._it.events.append(event)
        runtime.synchronize(self.ranks.device)
        if self.fence_mode == FENCE_COLLECTIVE:
            runtime.barrier()
        return _Mark(time.time(), *self.counters.read())

    def _text_pre(self, module, args):
        if self.active and self._it.text_start is None:
            self._it.text_start = self._boundary("text>")

    def _text_post(self, module, args, output):
        it = self._it
        if self.active and it.text_start is not None and it.denoise_start is None:
            it.text_end = self._boundary("text<")
            it.text_calls += 1

    def _denoiser_pre(self, module, args, kwargs):
        if not self.active:
            return None
        self.on_event("forward")
        it = self._it
        if it.denoise_start is None:
            it.denoise_start = self._boundary("denoise>")
            it.reference_clock = self._clock.mark()
            self.first_denoiser_call = (module, args, kwargs)
        if it.decode_start is None:
            it.forward_marks.append(self._clock.mark())
        return None

    def _decoder_pre(self, module, args):
        it = self._it
        if self.active and it.decode_start is None:
            it.decode_start = self._boundary("decode>")
            it.decode_clock = self._clock.mark()

    def _decoder_post(self, module, args, output):
        if self.active and self._it.decode_start is not None:
            self._it.decode_end = self._boundary("decode<")
            self._it.decoder_calls += 1

    def _step_end(self, pipeline, step, timestep, callback_kwargs):
        self.on_event("step")
        if self.active and self._it.decode_start is None:
            self._it.step_marks.append(self._clock.mark())
        return {}

    # --- records ---------------------------------------------------------------------------
    def record(self, it: _Iteration) -> dict:
        """One iteration's stages (time, energy per GPU and total), steps and boundaries; the
        remainder comes with `add_remainder` once the iteration's own window is known."""
        stages: dict[str, dict] = {}
        boundaries: list[list] = []
        windows = {
            "text_encoding": (it.text_start, it.text_end, it.text_calls),
            # Without a decoder call on this rank, its denoising window is open-ended: unusable.
            "denoising": (it.denoise_start, it.decode_start, len(it.forward_marks)),
            "decoding": (it.decode_start, it.decode_end, it.decoder_calls),
        }
        for stage, (start, end, calls) in windows.items():
            if start is None or end is None:
                stages[stage] = _stage(0.0, (None, None), 0)
                continue
            stages[stage] = _stage(end.wall - start.wall, window_energy(start, end), calls)
            boundaries.append([stage, start.wall, end.wall])
        return {
            "stages": stages,
            "window": [it.start_wall, it.end_wall],
            "denoiser_forwards": len(it.forward_marks),
            "steps": self._steps(it),
            "boundaries": boundaries,
        }

    def _steps(self, it: _Iteration) -> dict | None:
        steps = self.inference_steps
        if it.reference_clock is None:
            return None
        offsets = lambda marks: [self._clock.seconds(it.reference_clock, m) for m in marks]
        if len(it.step_marks) == steps:
            ends = offsets(it.step_marks)
            source = "step-end callback"
        elif it.forward_marks and len(it.forward_marks) % steps == 0:
            per_step = len(it.forward_marks) // steps
            starts = offsets(it.forward_marks[::per_step])
            last = self._clock.seconds(it.reference_clock, it.decode_clock) if it.decode_clock else None
            if last is None:
                return None
            ends = starts[1:] + [last]
            source = "denoiser forward" + (f" ({per_step} per step)" if per_step > 1 else "")
        else:
            logger.warning("Cannot split denoising into %d steps: %d step callbacks, %d "
                           "denoiser forwards; per-step latency is not recorded", steps,
                           len(it.step_marks), len(it.forward_marks))
            return None
        latencies = [b - a for a, b in zip([0.0] + ends[:-1], ends)]
        summary = stats.summarize(latencies)
        return {"source": source, "latency_s": latencies, "mean": summary["mean"],
                "median": summary["median"], "p90": summary["p90"]}


def _stage(time_s: float, energy: tuple[dict | None, str | None], calls: int) -> dict:
    gpu_energy, method = energy
    return {"time_s": time_s,
            "energy_j": None if gpu_energy is None else sum(gpu_energy.values()),
            "gpu_energy_j": gpu_energy, "energy_method": method, "calls": calls}


def _accepts(pipeline, name: str) -> bool:
    try:
        return name in inspect.signature(type(pipeline).__call__).parameters
    except (TypeError, ValueError):
        return False
