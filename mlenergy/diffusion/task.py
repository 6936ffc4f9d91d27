"""What a run generates: images or videos. Decided once per run and asked everywhere else."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    name: str  # the ML.ENERGY task name, also the folder under run/diffusion/
    noun: str  # "image" or "video": how results and summaries name one output
    output_attribute: str  # the pipeline output's field that holds the outputs
    output_dir: str  # folder of the saved outputs inside the run directory
    file_suffix: str
    subcommand: str  # short CLI subcommand
    prompt_column: str  # the prompt dataset's text column

    @property
    def is_video(self) -> bool:
        return self.noun == "video"

    @property
    def plural(self) -> str:
        return f"{self.noun}s"


TEXT_TO_IMAGE = Task("text-to-image", "image", "images", "image_outputs", "png", "workload:t2i",
                     "prompt")
TEXT_TO_VIDEO = Task("text-to-video", "video", "frames", "video_outputs", "mp4", "workload:t2v",
                     "text")
TASKS = {t.name: t for t in (TEXT_TO_IMAGE, TEXT_TO_VIDEO)}


def task_named(name: str) -> Task:
    return TASKS[name]
