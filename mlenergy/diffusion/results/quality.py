"""What a lossy option costs in output: this run's images (or videos) against those of an exact
reference run with the same model, prompts, seed, size, frames, steps and batch
(`--reference_run DIR`).

Videos are compared as saved: the decoded frames of both H.264 files, so the encoder's own loss
is part of the difference (identical frames encode identically, and read back as identical).

PSNR and SSIM need no model weights. LPIPS and CLIP score would need network weights that this
benchmark does not download, so they are reported as absent, never guessed.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import statistics
import sys
from pathlib import Path
from typing import Annotated, Sequence

import tyro

from mlenergy.diffusion.inputs.argcheck import parse_one_line
from mlenergy.diffusion.inputs.config import ConfigError, help_from_docstrings
from mlenergy.diffusion.results.files import REQUESTS, RESULTS
from mlenergy.diffusion.results.results_reader import ResultsError, RunResults

PROG = "mlenergy-diffusion quality"
ABSENT_METRICS = {
    "lpips": "absent: needs LPIPS network weights, which are not available locally",
    "clip_score": "absent: needs CLIP model weights, which are not available locally",
}


# How the run that checks its reference names it, and what it suggests: as the benchmark's
# --reference_run flag, or as the `quality` command's REFERENCE_DIR (where no flag was typed).
_AS_FLAG = {"name": "--reference_run {}", "iterations": "lower --benchmark_iters",
            "prompts": "use the same --workload.prompts_file / --workload.prompt_dataset as "
                       "the reference"}
_AS_COMMAND = {"name": "the reference run {}",
               "iterations": "compare with a reference that measured as many iterations",
               "prompts": "compare runs made with the same prompts"}


def load_reference(directory: Path, *, model_id: str, seed: int, height: int, width: int,
                   batch_size: int, inference_steps: int, benchmark_iters: int,
                   save_images: bool, num_frames: int | None = None,
                   words: dict = _AS_FLAG) -> RunResults:
    """Check, before anything loads, that DIR is a comparable run. Returns its results."""
    flag = words["name"].format(directory)
    if importlib.util.find_spec("skimage") is None:
        raise ConfigError(f"{flag} needs scikit-image for SSIM: "
                          "pip install 'mlenergy-diffusion-benchmark[quality]'")
    if not save_images:
        raise ConfigError(f"{flag} compares saved images; drop --no_save_images")
    if not directory.is_dir():
        raise ConfigError(f"{flag}: no such directory; point it at a finished run directory")
    for name in (RESULTS, REQUESTS):
        if not (directory / name).is_file():
            raise ConfigError(f"{flag}: {name} is missing; point it at a finished run directory "
                              "(the one that holds results.json)")
    try:
        reference = RunResults.load(directory)
        json.loads((directory / REQUESTS).read_text())
    except (OSError, ValueError) as err:  # ResultsError included
        raise ConfigError(f"{flag}: cannot read its JSON ({err})") from None
    ours = {"model_id": model_id, "seed": seed, "height": height, "width": width,
            "batch_size": batch_size, "inference_steps": inference_steps,
            "num_frames": num_frames}
    for key, value in ours.items():
        theirs = getattr(reference, key)
        if theirs != value:
            raise ConfigError(f"{flag} has {key} {theirs!r} but this run has {value!r}; "
                              "compare runs of the same model, seed, size, frames, steps and "
                              "batch")
    iterations = reference.iterations
    if len(iterations) < benchmark_iters:
        raise ConfigError(f"{flag} measured {len(iterations)} iteration(s), fewer than this "
                          f"run's {benchmark_iters}; {words['iterations']}")
    if any(len(it.outputs) != batch_size for it in iterations[:benchmark_iters]):
        raise ConfigError(f"{flag} saved no images for every measured prompt (was it run with "
                          "--no_save_images?); rerun it with images saved")
    return reference


def check_prompts(directory: Path, reference: RunResults, measured: Sequence[Sequence[str]],
                  words: dict = _AS_FLAG) -> None:
    """The measured prompts must be the reference's, iteration by iteration."""
    iterations = reference.iterations
    for index, batch in enumerate(measured):
        if iterations[index].prompts != list(batch):
            raise ConfigError(f"{words['name'].format(directory)} used other prompts "
                              f"(iteration {index}); {words['prompts']}")


def _load_rgb(path: Path):
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _load_frames(path: Path):
    """A saved video's frames as one (frames, height, width, 3) uint8 array."""
    import imageio.v3 as iio

    return iio.imread(path, index=None, plugin="FFMPEG")


VIDEO_SUFFIXES = (".mp4",)


def compare_images(ours: Path, theirs: Path) -> dict:
    """PSNR and SSIM of one output against the reference's: an image, or a video (PSNR over all
    its frames together, SSIM the mean of the frames')."""
    import numpy as np
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    video = ours.suffix in VIDEO_SUFFIXES
    load = _load_frames if video else _load_rgb
    a, b = load(ours), load(theirs)
    if a.shape != b.shape:
        raise ValueError(f"{ours.name}: shape {a.shape} differs from the reference's {b.shape}")
    identical = bool(np.array_equal(a, b))
    # PSNR of identical images is infinite; JSON has no infinity, so it is null with identical.
    psnr = None if identical else float(peak_signal_noise_ratio(b, a, data_range=255))
    pairs = zip(b, a) if video else [(b, a)]
    ssim = statistics.fmean(float(structural_similarity(x, y, channel_axis=-1, data_range=255))
                            for x, y in pairs)
    metrics = {"psnr_db": psnr, "ssim": ssim, "identical": identical}
    if video:
        metrics["frames"] = int(a.shape[0])
    return metrics


def quality_report(run_dir: Path, reference_dir: Path, reference: RunResults,
                   images_per_iteration: Sequence[Sequence[str]]) -> dict:
    """results.json `quality`: per image, PSNR (dB) and SSIM against the reference's image of
    the same iteration and index, and their means."""
    per_image = []
    iterations = reference.iterations
    for index, names in enumerate(images_per_iteration):
        counterparts = iterations[index].outputs
        if len(names) > len(counterparts):
            raise ConfigError(
                f"{run_dir} saved {len(names)} image(s) in iteration {index} but the reference "
                f"run {reference_dir} saved {len(counterparts)}: {names[len(counterparts)]} has "
                "no counterpart; compare runs of the same batch size")
        for position, name in enumerate(names):
            theirs = counterparts[position]
            metrics = compare_images(run_dir / name, reference_dir / theirs)
            per_image.append({"image": name, "reference_image": theirs, **metrics})
    psnrs = [m["psnr_db"] for m in per_image]
    any_identical = any(m["identical"] for m in per_image)
    return {
        "reference_run": str(reference_dir),
        "reference_configurations": reference.configurations,
        "num_images": len(per_image),
        "identical_images": sum(m["identical"] for m in per_image),
        # With an identical image the mean PSNR is infinite: null, and identical_images says so.
        "mean_psnr_db": statistics.fmean(psnrs) if per_image and not any_identical else None,
        "mean_ssim": statistics.fmean(m["ssim"] for m in per_image) if per_image else None,
        "min_ssim": min((m["ssim"] for m in per_image), default=None),
        "images": per_image,
        **ABSENT_METRICS,
    }


def summary_text(quality: dict) -> str:
    psnr = quality["mean_psnr_db"]
    psnr_text = ("identical" if psnr is None and quality["identical_images"] == quality["num_images"]
                 else "inf (some identical)" if psnr is None else f"{psnr:.2f} dB")
    ssim = quality["mean_ssim"]
    return f"PSNR {psnr_text}, SSIM {ssim:.4f}" if ssim is not None and math.isfinite(ssim) \
        else f"PSNR {psnr_text}"


def compare_finished_runs(run_dir: Path, reference_dir: Path) -> dict:
    """The `quality` block of a finished run against a finished reference run, for runs made
    where scikit-image was not installed (GPU nodes with a minimal image)."""
    try:
        run = RunResults.load(run_dir)
    except ResultsError as err:
        raise ConfigError(f"{run_dir}: {err}; point it at a finished run directory") from None
    reference = load_reference(
        reference_dir, model_id=run.model_id, seed=run.seed, height=run.height,
        width=run.width, batch_size=run.batch_size, inference_steps=run.inference_steps,
        benchmark_iters=run.num_iterations, save_images=True, num_frames=run.num_frames,
        words=_AS_COMMAND)
    check_prompts(reference_dir, reference, [it.prompts for it in run.iterations],
                  words=_AS_COMMAND)
    return quality_report(run_dir, reference_dir, reference,
                          [it.outputs for it in run.iterations])


@help_from_docstrings
@dataclasses.dataclass(frozen=True)
class QualityArgs:
    """PSNR and SSIM of a finished run's images (or videos) against those of an exact reference
    run."""

    run_dir: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="RUN_DIR")]]
    """The run directory to judge (it holds results.json)."""

    reference_dir: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="REFERENCE_DIR")]]
    """The exact run to compare with: same model, seed, size, steps, batch and prompts."""

    write: bool = False
    """Also store the result as `quality` in RUN_DIR/results.json."""


def main(argv: Sequence[str] | None = None) -> int:
    from mlenergy.diffusion.results.files import write_json_atomically

    args = parse_one_line(
        lambda a: tyro.cli(QualityArgs, args=a, use_underscores=True, prog=PROG,
                           description=QualityArgs.__doc__),
        sys.argv[1:] if argv is None else argv, prog=PROG)
    try:
        report = compare_finished_runs(args.run_dir, args.reference_dir)
    except (ConfigError, OSError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.run_dir.name}: {summary_text(report)} over {report['num_images']} image(s)")
    if args.write:
        # The document as written, its keys in their order, with `quality` set.
        doc = dict(RunResults.load(args.run_dir).doc)
        doc["quality"] = report
        write_json_atomically(args.run_dir / RESULTS, doc)
    return 0


if __name__ == "__main__":
    from mlenergy.diffusion.process.console import exit_quietly_on_broken_pipe

    sys.exit(exit_quietly_on_broken_pipe(main))
