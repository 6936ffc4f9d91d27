"""The run plan: every setting of a run, resolved and validated (by `plan.make_plan`), as one
frozen value. Everything downstream reads this value, never the command line it came from.

Kept apart from `plan.py`, which builds it, so that the checks `plan.py` calls (`limits.py`) can
name the type without importing their caller.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from mlenergy.diffusion.inputs.task import Task
from mlenergy.diffusion.models.registry import ModelSpec
from mlenergy.diffusion.planning.options import Options
from mlenergy.diffusion.process.launch import Launch


@dataclasses.dataclass(frozen=True)
class PromptSource:
    """Where the run's prompts come from and how they are drawn (the --workload.prompt* flags;
    the dataset already the task's own when none was given)."""

    prompts_file: Path | None
    prompt_dataset: str
    prompt_cache_dir: Path | None
    prompt_sampling: str


@dataclasses.dataclass(frozen=True)
class RunPlan:
    spec: ModelSpec
    task: Task
    # The component configs the run builds or checks against: the tiny model's, or the model's
    # full-size architecture (random and pretrained weights).
    architecture: Mapping[str, Mapping[str, Any]]
    # A few-layer stand-in for the model (--workload.weights tiny): its size says nothing about
    # the model's, so nothing is sized or recorded from it.
    tiny_model: bool
    weights: str
    batch_size: int
    height: int
    width: int
    inference_steps: int
    guidance_scale: float
    seed: int
    dtype: str
    max_sequence_length: int | None
    warmup_iters: int
    warmup_steps: int
    benchmark_iters: int
    ulysses_degree: int
    ring_degree: int
    launch: Launch
    options: Options
    run_dir: Path
    prompts: PromptSource
    save_images: bool = True
    overwrite_results: bool = False
    idle_baseline_s: float = 3.0
    require_exclusive_gpus: bool = False
    count_flops: bool = True
    # Denoising steps of the profiled call after the measured phase (0: none).
    profile_steps: int = 0
    num_frames: int | None = None
    fps: int | None = None
    # The run directory of the --reference_run, and its results.json, checked to be comparable.
    reference_run: Path | None = None
    reference: dict | None = None
    # Every flag as given on the command line (None: left to the plan), for the driver log.
    flags_given: tuple[tuple[str, Any], ...] = ()

    @property
    def family(self):
        """The pipeline family the run builds (its `architecture` is this family's)."""
        return self.spec.family

    @property
    def base_dir(self) -> Path:
        return self.run_dir.parent

    @property
    def world_size(self) -> int:
        return self.launch.world_size

    @property
    def device_type(self) -> str:
        return self.launch.device_type

    @property
    def num_gpus(self) -> int:
        return self.world_size if self.device_type == "cuda" else 0
