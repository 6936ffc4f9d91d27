"""Command-line configuration: typed dataclasses parsed by tyro.

Everything a run depends on is a field here; `plan.py` resolves model defaults and validates.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import sys
import textwrap
import typing
from pathlib import Path
from typing import Annotated, Literal, Optional, Sequence, Union

import tyro

from mlenergy.diffusion.inputs.argcheck import parse_one_line
from mlenergy.diffusion.inputs.task import TASKS, TEXT_TO_IMAGE, TEXT_TO_VIDEO, Task


class ConfigError(ValueError):
    """Bad input: the message is one line that says what is wrong and how to fix it."""


DEFAULT_SEED = 48105
# xDiT's default TeaCache / FBCache threshold.
DEFAULT_CACHE_THRESHOLD = 0.12
PROMPT_DATASET = TEXT_TO_IMAGE.dataset
VIDEO_PROMPT_DATASET = TEXT_TO_VIDEO.dataset


def _field_docstrings(cls: type) -> dict[str, str]:
    """The string below each field of `cls` and its bases, as `one_paragraph` makes it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for field, below in zip(body, body[1:]):
            if (isinstance(field, ast.AnnAssign) and isinstance(field.target, ast.Name)
                    and isinstance(below, ast.Expr) and isinstance(below.value, ast.Constant)):
                docs[field.target.id] = one_paragraph(below.value.value)
    return docs


def one_paragraph(text: str) -> str:
    """A docstring as tyro should show it: each paragraph (blank lines part them) on one line,
    for tyro to wrap to the terminal's width."""
    return "\n\n".join(" ".join(p.split()) for p in inspect.cleandoc(text).split("\n\n"))


def help_from_docstrings(cls: type) -> type:
    """Give tyro each field's docstring as its help, one paragraph re-wrapped to the terminal.

    Left to itself tyro 1.0 keeps every line break of an indented docstring (the lines then
    come out ragged), and shows a default decided later (None here) as `(default: None)` beside
    the docstring's own "Default: ...". That closing sentence becomes the default shown instead.
    """
    hints = typing.get_type_hints(cls, include_extras=True)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for name, doc in _field_docstrings(cls).items():
        if name not in cls.__dict__.get("__annotations__", {}):
            continue
        hint = None
        if defaults.get(name) is None and "Default: " in doc:
            doc, default = doc.rsplit("Default: ", 1)
            doc, hint = doc.strip(), f"(default: {default.strip().rstrip('.')})"
        cls.__annotations__[name] = Annotated[hints[name],
                                              tyro.conf.arg(help=doc, help_behavior_hint=hint)]
    return cls


@help_from_docstrings
@dataclasses.dataclass(frozen=True)
class TextToImage:
    """Generate images from text prompts."""

    model_id: str = "black-forest-labs/FLUX.1-dev"
    """A Hugging Face hub id (ORG/NAME; registered ids, listed by `mlenergy-diffusion models`, need
    nothing else, others their family), or a local directory of a diffusers pipeline. Recorded as
    typed."""

    family: Optional[str] = None
    """Pipeline family of an unregistered hub id or a local directory: flux, pixart-sigma,
    pixart-alpha, sd3, hunyuandit, sdxl, sana (images); cogvideox, wan, hunyuanvideo, latte
    (videos). Default: read from the model's model_index.json where it is at hand (a local
    directory, or the local Hugging Face cache)."""

    revision: Optional[str] = None
    """Branch, tag, commit or refs/pr/N of a hub model to load. Default: main, or the revision
    the registry names for the id (tencent/HunyuanVideo: refs/pr/18, its diffusers pipeline)."""

    variant: Optional[str] = None
    """Weight-file variant to load, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors).
    Default: the repository's main weights."""

    model_name: Optional[str] = None
    """ORG/NAME to record the model under (results, run directory, model_info.json). Default: the
    id as typed; local/<folder> for a local directory."""

    flow_shift: Optional[float] = None
    """Shift of the flow-matching noise schedule (the scheduler's flow_shift or shift: sana, sd3,
    wan, hunyuanvideo). Default: the checkpoint's."""

    weights: Literal["pretrained", "random", "tiny"] = "pretrained"
    """pretrained: from_pretrained from a hub id or local directory. random: the full-size
    architecture with random weights (no download; for measuring hardware). tiny: a tiny
    random-weight pipeline of the same family, built in code (CPU tests, smoke runs)."""

    base_dir: Optional[Path] = None
    """Directory under which the run directory is created. Default:
    run/diffusion/<task>/<model_id>."""

    batch_size: int = 1
    """Prompts per pipeline call."""

    height: Optional[int] = None
    """Height in pixels. Default: the model's."""

    width: Optional[int] = None
    """Width in pixels. Default: the model's."""

    inference_steps: Optional[int] = None
    """Denoising steps. Default: the model's."""

    guidance_scale: Optional[float] = None
    """Classifier-free (or distilled) guidance scale. Default: the model's."""

    seed: int = DEFAULT_SEED
    """Seeds prompt sampling and the initial latents."""

    dtype: Optional[Literal["bfloat16", "float16", "float32"]] = None
    """Weight and activation dtype. Default: the model's on GPU; float32 on CPU."""

    prompts_file: Optional[Path] = None
    """Prompts to sample from instead of the dataset: a text file (one prompt a line) or JSONL
    with a `prompt` field."""

    prompt_dataset: str = PROMPT_DATASET
    """Hugging Face dataset id, or a local parquet file or directory with a `prompt` column."""

    prompt_cache_dir: Optional[Path] = None
    """Where the dataset's prompts are cached. Default: $MLENERGY_CACHE_DIR/prompts, else
    ~/.cache/mlenergy/prompts."""

    prompt_sampling: Literal["shuffle", "leaderboard"] = "shuffle"
    """shuffle: one seeded shuffle of the pool, measured prompts first. leaderboard: the ML.ENERGY
    v3 benchmark's sampling (random.seed(seed), then random.sample of iterations x batch prompts),
    so a run measures the prompts of the leaderboard's shared requests file for its seed, batch
    size and iteration count."""

    @property
    def task(self) -> Task:
        return TEXT_TO_IMAGE


@help_from_docstrings
@dataclasses.dataclass(frozen=True)
class TextToVideo(TextToImage):
    """Generate videos from text prompts."""

    model_id: str = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    """A video model's hub id (ORG/NAME), or a local directory of a diffusers pipeline."""

    prompt_dataset: str = VIDEO_PROMPT_DATASET
    """Hugging Face dataset id, or a local parquet file or directory with a `text` column."""

    num_frames: Optional[int] = None
    """Frames per video: 1 + 4k for CogVideoX, Wan and HunyuanVideo; exactly 16 for Latte-1.
    Default: the model's."""

    fps: Optional[int] = None
    """Frames per second of the saved video. Default: the model's."""

    @property
    def task(self) -> Task:
        return TEXT_TO_VIDEO


Workload = Union[
    Annotated[TextToImage, tyro.conf.subcommand(TEXT_TO_IMAGE.name)],
    Annotated[TextToVideo, tyro.conf.subcommand(TEXT_TO_VIDEO.name)],
]


@help_from_docstrings
@dataclasses.dataclass(frozen=True)
class BenchmarkConfig:
    """Measure latency and GPU energy of a diffusion model through xDiT."""

    workload: Workload

    ulysses_degree: int = 1
    """Ulysses sequence-parallel degree. ulysses_degree x ring_degree must equal the number of
    processes (torchrun --nproc_per_node x --nnodes)."""

    ring_degree: int = 1
    """Ring-attention sequence-parallel degree (GPU only)."""

    use_torch_compile: bool = False
    """Compile the denoiser (torch.compile, at its first call, i.e. in warm-up): through xDiT
    where it has a pipeline class for the family; see --compile_scope."""

    compile_mode: Optional[str] = None
    """torch.compile mode for --use_torch_compile: default, reduce-overhead (CUDA graphs),
    max-autotune, max-autotune-no-cudagraphs. Default: torch's default mode, as xDiT uses."""

    compile_backend: str = "inductor"
    """torch.compile backend for --use_torch_compile: inductor (what xDiT uses), or eager /
    aot_eager (trace only, no code generation: for quick tests)."""

    compile_scope: Optional[str] = None
    """What --use_torch_compile compiles: transformer (the denoiser's whole forward, through
    xDiT where it has a pipeline class) or blocks (each repeated transformer block, diffusers'
    regional compilation: one graph per block class, so a fraction of the compile time, and it
    composes with the step caches). Default: transformer."""

    compile_autotune: bool = False
    """With --use_torch_compile (inductor): inductor's coordinate-descent tuning of each Triton
    kernel at its first call (in all directions), for about 2% more speed at a first call that
    is minutes longer. Default: off, and no other option turns it on (torchao's FP8 config would,
    process-wide; the benchmark does not let it)."""

    compile_overlap: bool = False
    """With --use_torch_compile (inductor) and more than one process: let inductor reorder each
    compiled graph's collectives to overlap them with computation
    (reorder_for_compute_comm_overlap). Default: off."""

    use_fp8_t5_encoder: bool = False
    """Store the T5 text encoder's weights in FP8 (optimum-quanto qfloat8; T5 families only)."""

    fuse_qkv: bool = False
    """Fuse each attention layer's query, key and value projections into one linear layer
    (diffusers' fuse_projections) before compiling: one matmul instead of three, the same
    result up to rounding. Families whose attention has no fusion refuse it. --quantize_denoiser
    fp8 always fuses. Default: off."""

    quantize_denoiser: Optional[Literal["fp8"]] = None
    """fp8: the denoiser's linear layers in FP8 (torchao float8 weights and dynamic activations,
    one scale per row, after fusing the attention QKV projections); GPUs with FP8 tensor cores
    (compute capability 8.9+), bfloat16, torchao 0.18.0 (the fp8-denoiser extra). Default: off."""

    enable_sequential_cpu_offload: bool = False
    """diffusers' sequential CPU offload: weights live in CPU memory and move to the GPU layer by
    layer (one GPU, one process)."""

    use_teacache: bool = False
    """xDiT's TeaCache (FLUX family)."""

    use_fbcache: bool = False
    """xDiT's first-block cache (FLUX family)."""

    cache_threshold: Optional[float] = None
    """Relative-L1 threshold under which TeaCache / FBCache reuse the cached blocks (higher: more
    reuse, faster, lossier). Default: 0.12, as in xDiT."""

    attention_backend: Optional[str] = None
    """Attention kernel: sdpa, sdpa_flash, sdpa_efficient, sdpa_math, cudnn, flash (flash-attn
    2), flash_3 (flash-attn 3). fa3: FlashAttention-3 forward from the fa3-fwd wheel (the fa3
    extra; Hopper GPUs, not with ring attention). Sequence-parallel runs set xDiT's backend; on
    one process xDiT leaves attention to diffusers, and it is set there. Default: xDiT's choice
    (cuDNN on Hopper); on one process diffusers' (torch SDPA)."""

    reference_run: Optional[Path] = None
    """Run directory of an exact run (same model, prompts, seed, size, steps and batch) to compare
    this run's images with: PSNR and SSIM per image go into results.json `quality`."""

    warmup_iters: Optional[int] = None
    """Unmeasured iterations before measuring, at the measured shapes; with --use_torch_compile
    at least 2 (the first compiles, the second shows that nothing compiles any more). Default: 1;
    2 with --use_torch_compile."""

    warmup_steps: Optional[int] = None
    """Denoising steps of each warm-up iteration. For a video one step already runs every
    measured shape, and a whole video can take minutes. Default: the measured steps for images;
    1 for videos."""

    benchmark_iters: Optional[int] = None
    """Measured iterations. Default: images 8 when steps <= 30, else 4; videos 2."""

    save_images: bool = True
    """Save generated images (or videos) into the run directory (outside measurement windows)."""

    overwrite_results: bool = False
    """Rerun even if the run directory already holds results.json."""

    idle_baseline_s: float = 3.0
    """Seconds of idle GPU power recorded after loading and before warm-up (GPU only; 0 skips)."""

    require_exclusive_gpus: bool = False
    """Fail the run when other processes have a compute context on its GPUs (otherwise: warn)."""

    count_flops: bool = True
    """Count the FLOPs of one denoiser forward after the measured phase (the physical floor)."""

    profile_steps: int = 0
    """After the measured iterations, outside every window: profile one pipeline call of N
    denoising steps with torch.profiler on every rank (GPU only; N at least 2, the first step is
    left out), with the GPU's power sampled meanwhile. results.json `profile` splits each
    rank's step time into matmul, attention, communication, other kernels (norms, RoPE,
    modulation, activations) and idle, with power and energy by activity; rank 0's kernel table
    goes to profile.txt. Default: 0, no profile."""

    verbose: bool = False
    """Show third-party log lines (xDiT's DEBUG and INFO, diffusers, transformers, datasets) and
    deprecation warnings. Otherwise only their errors show, and xDiT's warnings."""


_SUBCOMMAND_ALIASES = {task.subcommand: task.long_subcommand for task in TASKS.values()}
# The previous ML.ENERGY benchmark's spellings (its job templates), accepted for ours; the help
# shows ours only.
FLAG_ALIASES = {
    "--workload.ulysses_degree": "--ulysses_degree",
    "--workload.ring_degree": "--ring_degree",
}


def _canonical_spellings(argv: Sequence[str]) -> list[str]:
    renamed = []
    for token in argv:
        name, equals, value = token.partition("=")
        renamed.append(FLAG_ALIASES.get(name, name) + equals + value
                       if token.startswith("--") else token)
    return renamed


def _top_level_flags() -> dict[str, bool]:
    """Top-level option spellings -> whether they take a value."""
    flags: dict[str, bool] = {}
    for f in dataclasses.fields(BenchmarkConfig):
        if f.name == "workload":
            continue
        is_bool = f.type in (bool, "bool")
        flags[f"--{f.name}"] = not is_bool
        if is_bool:
            flags[f"--no_{f.name}"] = False
    flags.update({alias: flags[name] for alias, name in FLAG_ALIASES.items()})
    return flags


def normalize_argv(argv: Sequence[str]) -> list[str]:
    """Accept top-level flags before and after the subcommand, and the short subcommand names.

    tyro wants a parent's options before the subcommand; the reference README puts them on both
    sides. Options after the subcommand that belong to the top level move in front of it.
    """
    args = [_SUBCOMMAND_ALIASES.get(a, a) for a in argv]
    sub = next((i for i, a in enumerate(args) if a.startswith("workload:")), None)
    if sub is None:
        return args
    flags = _top_level_flags()
    head, tail = args[: sub + 1], args[sub + 1:]
    moved: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(tail):
        arg = tail[i]
        name = arg.split("=", 1)[0]
        if name in flags:
            takes_value = flags[name] and "=" not in arg
            take = 2 if takes_value and i + 1 < len(tail) else 1
            moved.extend(tail[i:i + take])
            i += take
        else:
            rest.append(arg)
            i += 1
    return args[:sub] + moved + head[sub:] + rest


def parse_cli(argv: Sequence[str] | None = None, quiet: bool = False) -> BenchmarkConfig:
    """The run's configuration from `argv`; `quiet`: refuse bad input without printing (every
    rank but one, under torchrun)."""
    argv = sys.argv[1:] if argv is None else argv
    return parse_one_line(
        lambda args: tyro.cli(BenchmarkConfig, args=_canonical_spellings(args),
                              use_underscores=True, description=BenchmarkConfig.__doc__),
        normalize_argv(argv), prog="mlenergy-diffusion run", aliases=FLAG_ALIASES, quiet=quiet)
