"""Sweep presets: named grids of models, batch sizes and (Ulysses, ring) degrees, with the
benchmark flags each model runs with.

    python -m mlenergy.diffusion.sweep --preset leaderboard-v3 [--task text-to-video] ...
    mlenergy-diffusion presets                   # the presets
    mlenergy-diffusion presets leaderboard-v3    # the `hf download` commands it needs

`leaderboard` is the leaderboard's grid over every registered model at its registry defaults.
`leaderboard-v3` reproduces the ML.ENERGY leaderboard v3 runs (PyPI mlenergy-benchmark 3.0.0 and
the configs/xdit tree of ml-energy/benchmark): its models, its grid, and its per-model settings
where they differ from this registry's defaults. docs/leaderboard-v3.md lists every deliberate
difference that remains.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from typing import Annotated, Literal, Mapping, Optional

import tyro

from mlenergy.diffusion.inputs.argcheck import parse_one_line
from mlenergy.diffusion.inputs.config import help_from_docstrings
from mlenergy.diffusion.inputs.task import TASKS as TASKS_BY_NAME, TEXT_TO_IMAGE, TEXT_TO_VIDEO
from mlenergy.diffusion.models.registry import MODELS, known_model_ids

TASKS = tuple(TASKS_BY_NAME)

# (Ulysses, ring) degrees of the leaderboard's sweeps: every split of 1, 2, 4 and 8 GPUs.
LEADERBOARD_PARALLEL = ((1, 1), (1, 2), (2, 1), (1, 4), (2, 2), (4, 1), (1, 8), (2, 4), (4, 2),
                        (8, 1))
LEADERBOARD_BATCH_SIZES = (1, 2, 4, 8, 16)


@dataclass(frozen=True)
class PresetModel:
    model_id: str
    # Benchmark flags of this model's points, and why (for the docs and --help).
    flags: tuple[str, ...] = ()
    why: str = ""


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    batch_sizes: Mapping[str, tuple[int, ...]]
    parallel: tuple[tuple[int, int], ...]
    # Task -> models; None: every registered model of the task, with no flags.
    models: Mapping[str, tuple[PresetModel, ...]] | None = None
    # Flags of every point, before the model's.
    common_flags: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def models_of(self, task: str) -> tuple[PresetModel, ...]:
        if self.models is None:
            return tuple(PresetModel(m) for m in known_model_ids(task))
        return self.models.get(task, ())

    def grid(self, task: str) -> dict:
        """What the sweep runner takes: models, batch sizes, degrees, and each model's flags."""
        models = self.models_of(task)
        return {
            "models": [m.model_id for m in models],
            "batch_sizes": self.batch_sizes[task],
            "parallel": self.parallel,
            "flags": {m.model_id: [*self.common_flags, *m.flags] for m in models},
        }


_STEPS_50 = ("--workload.inference_steps", "50")
_BF16 = ("--workload.dtype", "bfloat16")
_PIPELINE_GUIDANCE = ("--workload.guidance_scale", "7.0")
_WAN_SHIFT = ("--workload.flow_shift", "12")

PRESETS: dict[str, Preset] = {
    "leaderboard": Preset(
        name="leaderboard",
        description="batch 1 2 4 8 16 and (ulysses, ring) in 1x1 1x2 2x1 1x4 2x2 4x1 1x8 2x4 4x2 "
                    "8x1, every registered model of the task at its registry defaults",
        batch_sizes={task: LEADERBOARD_BATCH_SIZES for task in TASKS},
        parallel=LEADERBOARD_PARALLEL,
    ),
    "leaderboard-v3": Preset(
        name="leaderboard-v3",
        description="the ML.ENERGY leaderboard v3 runs: its 7 image and 6 video models with "
                    "their v3 settings (FLUX.1-dev 50 steps; bf16 where v3 ran bf16; Wan "
                    "flow shift 12; SD3.5 at the pipeline's guidance 7), the leaderboard's "
                    "prompt sampling, batch 1-16, and the same (ulysses, ring) degrees "
                    "(ml-energy/benchmark configs/xdit at tag v3.0, 14571a8)",
        # Videos too: the v3.0 release's video benchmark.yaml dropped the batch of 32
        # that the campaign's first configuration (05f288a, bc2cb39) listed.
        batch_sizes={TEXT_TO_IMAGE.name: LEADERBOARD_BATCH_SIZES,
                     TEXT_TO_VIDEO.name: LEADERBOARD_BATCH_SIZES},
        parallel=LEADERBOARD_PARALLEL,
        common_flags=("--workload.prompt_sampling", "leaderboard"),
        models={
            TEXT_TO_IMAGE.name: (
                PresetModel("black-forest-labs/FLUX.1-dev", _STEPS_50,
                            "v3 ran 50 steps (the registry's default is 28)"),
                PresetModel("PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"),
                PresetModel("stabilityai/stable-diffusion-3.5-medium", _PIPELINE_GUIDANCE,
                            "v3 left guidance at the pipeline's default, 7.0"),
                PresetModel("stabilityai/stable-diffusion-3.5-large", _PIPELINE_GUIDANCE,
                            "v3 left guidance at the pipeline's default, 7.0"),
                PresetModel("Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers", _BF16,
                            "v3 ran bf16 (the registry's default is fp16)"),
                PresetModel("Efficient-Large-Model/SANA1.5_1.6B_1024px_diffusers"),
                PresetModel("Efficient-Large-Model/SANA1.5_4.8B_1024px_diffusers"),
            ),
            TEXT_TO_VIDEO.name: (
                PresetModel("zai-org/CogVideoX-2b", _BF16,
                            "v3 ran bf16 (the registry's default is fp16)"),
                PresetModel("zai-org/CogVideoX1.5-5B"),
                PresetModel("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", _WAN_SHIFT,
                            "v3 set the scheduler's flow_shift to 12 (the checkpoint's is 3)"),
                PresetModel("Wan-AI/Wan2.1-T2V-14B-Diffusers", _WAN_SHIFT,
                            "v3 set the scheduler's flow_shift to 12 (the checkpoint's is 3)"),
                PresetModel("tencent/HunyuanVideo"),
                PresetModel("maxin-cn/Latte-1", _BF16,
                            "v3 ran bf16 (the registry's default is fp16)"),
            ),
        },
    ),
}


def for_task(name: str | None, task: str) -> dict:
    """The sweep grid of preset `name` for `task`; empty without a preset."""
    return PRESETS[name].grid(task) if name is not None else {}


# Files of a component folder that a torch pipeline never loads (Flax, ONNX, TensorFlow).
NEVER_LOADED = ("*.msgpack", "*.onnx", "*.onnx_data", "*.pb")


def download_patterns(model_id: str) -> list[str]:
    """The files a pretrained run of `model_id` loads, as `hf download --include` patterns: the
    pipeline's model_index.json and the folders of its components (tokenizers and scheduler
    included), never the single-file checkpoints some repositories also hold at their root."""
    family = MODELS[model_id].family
    folders = {slot for slot in family.components}
    folders |= {c.tokenizer_slot for c in family.components.values() if c.tokenizer_slot}
    folders |= set(family.pretrained_subfolders.values())
    return ["model_index.json", *(f"{folder}/*" for folder in sorted(folders))]


def download_command(model_id: str) -> str:
    """`hf download` of one registered model: its revision (the registry's), the files the
    pipeline loads, and not the formats it never loads."""
    row = MODELS[model_id]
    revision = row.revision if row.model_id == model_id else None
    return shlex.join(["hf", "download", model_id, *(["--revision", revision] if revision else []),
                       "--include", *download_patterns(model_id), "--exclude", *NEVER_LOADED])


def download_commands(name: str) -> list[str]:
    """`hf download` lines for every model of a preset."""
    return [download_command(model.model_id)
            for task in TASKS for model in PRESETS[name].models_of(task)]


def preset_table() -> str:
    """One line per preset: its name, its models and points per task, and what it is."""
    lines = []
    for preset in PRESETS.values():
        counts = ", ".join(
            f"{len(preset.models_of(task))} {task.split('-')[-1]} models x "
            f"{len(preset.batch_sizes[task])} batch sizes x {len(preset.parallel)} degrees"
            for task in TASKS)
        lines += [f"{preset.name}: {counts}", f"  {preset.description}"]
    lines += ["", "`mlenergy-diffusion presets NAME` prints the `hf download` commands of a "
                  "preset's models; `mlenergy-diffusion sweep --preset NAME` runs it."]
    return "\n".join(lines)


@help_from_docstrings
@dataclass(frozen=True)
class PresetsArgs:
    """List the sweep presets, or print the `hf download` commands of one preset's models (with
    the registry's revisions and the files each pipeline loads), to fetch them ahead of a
    campaign, on a machine with network and the same HF_HOME as the runs."""

    preset: tyro.conf.Positional[Annotated[Optional[str], tyro.conf.arg(metavar="NAME")]] = None
    """The preset whose download commands to print: leaderboard or leaderboard-v3. Default: list
    the presets."""


def main(argv: list[str] | None = None) -> int:
    prog = "mlenergy-diffusion presets"
    args = parse_one_line(
        lambda a: tyro.cli(PresetsArgs, args=a, prog=prog, description=" ".join(
            PresetsArgs.__doc__.split())), sys.argv[1:] if argv is None else argv, prog=prog)
    if args.preset is not None and args.preset not in PRESETS:
        print(f"error: no preset {args.preset!r}; choose one of {', '.join(PRESETS)} "
              f"(`{prog}` lists them)", file=sys.stderr)
        return 2
    print(preset_table() if args.preset is None else "\n".join(download_commands(args.preset)))
    return 0


if __name__ == "__main__":
    from mlenergy.diffusion.process.console import exit_quietly_on_broken_pipe

    sys.exit(exit_quietly_on_broken_pipe(main))
