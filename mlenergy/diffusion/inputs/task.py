"""What a run generates: images or videos. Decided once per run and asked everywhere else.

The task strings ("text-to-image", "text-to-video") are spelled here and in the data tables
(registry, families, published values) only; everything else asks the run's `Task`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The ML.ENERGY task names, as the command line, the registry and the sweep spell them.
TaskName = Literal["text-to-image", "text-to-video"]


@dataclass(frozen=True)
class Task:
    name: str  # the ML.ENERGY task name, also the folder under run/diffusion/
    noun: str  # "image" or "video": how results and summaries name one output
    output_attribute: str  # the pipeline output's field that holds the outputs
    output_dir: str  # folder of the saved outputs inside the run directory
    file_suffix: str
    subcommand: str  # short CLI subcommand
    prompt_column: str  # the prompt dataset's text column
    dataset: str  # the task's own prompt dataset (Hugging Face id)
    fallback_prompts_file: str  # shipped prompts for runs that cannot reach `dataset`

    @property
    def is_video(self) -> bool:
        return self.noun == "video"

    @property
    def plural(self) -> str:
        return f"{self.noun}s"

    @property
    def long_subcommand(self) -> str:
        return f"workload:{self.name}"

    def default_benchmark_iters(self, steps: int) -> int:
        """Measured iterations when not given, as the ML.ENERGY benchmark measured: images 8
        when steps <= 30, else 4; videos 2 (one video takes minutes)."""
        if self.is_video:
            return 2
        return 8 if steps <= 30 else 4

    def default_warmup_steps(self, steps: int) -> int:
        """Denoising steps of a warm-up iteration when not given: all of them for images; one for
        videos, since one step already runs every measured shape."""
        return 1 if self.is_video else steps


TEXT_TO_IMAGE = Task("text-to-image", "image", "images", "image_outputs", "png", "workload:t2i",
                     "prompt", "data-is-better-together/open-image-preferences-v1",
                     "data/fallback_prompts.txt")
TEXT_TO_VIDEO = Task("text-to-video", "video", "frames", "video_outputs", "mp4", "workload:t2v",
                     "text", "RaphaelLiu/EvalCrafter_T2V_Dataset",
                     "data/fallback_video_prompts.txt")
TASKS = {t.name: t for t in (TEXT_TO_IMAGE, TEXT_TO_VIDEO)}


def task_named(name: str) -> Task:
    return TASKS[name]


def task_with_frames(num_frames: int | None) -> Task:
    """The task of results written before the task was recorded: a frame count means video."""
    return TEXT_TO_VIDEO if num_frames is not None else TEXT_TO_IMAGE
