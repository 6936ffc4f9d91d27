"""What a run leaves behind, written in one place: results.json (the ML.ENERGY format and more,
from the run's record), requests.json and model_info.json."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from mlenergy.diffusion.models import resolve
from mlenergy.diffusion.output import rundir
from mlenergy.diffusion.results import stats

if TYPE_CHECKING:
    from mlenergy.diffusion.output.record import IterationRecord, RunRecord
    from mlenergy.diffusion.planning.run_plan import RunPlan


def output_name(iteration: int, index: int, prompt: str, suffix: str = "png") -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", prompt).strip("-").lower()[:60] or "prompt"
    return f"i{iteration}-{index}_{slug}.{suffix}"


def requests_document(plan: RunPlan, warmup: list[list[str]], measured: list[list[str]]) -> list:
    docs = [{"batch_size": len(b), "prompts": b, "warmup": True} for b in warmup]
    docs += [{"batch_size": len(b), "prompts": b, "warmup": False} for b in measured]
    return docs


def configurations(plan: RunPlan) -> dict:
    return {
        "ulysses_degree": plan.ulysses_degree,
        "ring_degree": plan.ring_degree,
        **plan.options.configurations(),
        "reference_run": str(plan.reference_run) if plan.reference_run is not None else None,
        "warmup_iters": plan.warmup_iters,
        "warmup_steps": plan.warmup_steps,
        "benchmark_iters": plan.benchmark_iters,
    }


def results_document(record: RunRecord) -> dict:
    """results.json: the keys the ML.ENERGY benchmark 3.0.0 writes, in its order, then ours.

    Headline numbers come from the per-iteration windows. `iteration_energy_measurements` exists
    only when every iteration's energy was measured, because readers take 0 or NaN at face value.
    Without a power timeline (no GPUs) only the benchmark window's bounds are written in
    `timeline`. The measurement sections (stage split, statistics, floor, checks) follow the
    iterations.
    """
    plan, task = record.plan, record.plan.task
    measured = record.energy_measured
    doc: dict = {
        "date": record.started.strftime("%Y%m%d-%H%M%S"),
        "model_id": plan.spec.model_id,
        "batch_size": plan.batch_size,
        "num_iterations": len(record.iterations),
        "height": plan.height,
        "width": plan.width,
        "inference_steps": plan.inference_steps,
        "seed": plan.seed,
    }
    if task.is_video:
        doc["num_frames"] = plan.num_frames
        doc["fps"] = plan.fps
    doc.update(_headline(record))
    doc["energy_measurement"] = record.whole.to_dict()
    if measured:
        doc["iteration_energy_measurements"] = [r.measurement.to_dict()
                                                for r in record.iterations]
    doc["configurations"] = configurations(plan)
    doc["timeline"] = record.observations.timeline.to_results()
    doc.update(_run_facts(record))
    doc["iterations"] = [_iteration(r, task.plural) for r in record.iterations]
    doc.update(record.analysis.to_results())
    doc.update({
        "peak_memory_gb": record.peak_memory_gb,
        "peak_memory_gb_per_rank": record.observations.peak_memory_gb,
        "parameter_memory_gb": record.load.parameter_gb,
        "model_load_time_s": record.load.seconds,
        "warmup_time_s": record.warmup.seconds,
        "startup": record.startup.to_results() if record.startup else None,
        "environment": record.environment.to_results(),
        "provenance": record.provenance.to_results() if record.provenance else None,
        "shared_node_runs": None if record.shared_node_runs is None
        else [r.to_results() for r in record.shared_node_runs],
    })
    doc.update(record.option_results())
    # Sections of probes added to probes/__init__.py's ADDED_PROBES, each under its own key.
    doc.update({s.RESULTS_KEY: s.to_results() for s in record.observations.added})
    # What makes this run this run: a rerun with other settings must not pass for it.
    doc[rundir.IDENTITY_KEY] = rundir.identity(plan)
    return doc


def _headline(record: RunRecord) -> dict:
    """Totals and per-output numbers; a video is one output: the same numbers as the image keys,
    under names that say so."""
    out = {
        "total_images": record.total_outputs,
        "total_time": record.total_time,
        "throughput_images_per_sec": record.throughput,
        "avg_time_per_image": record.time_per_output,
        "total_energy": record.total_energy,
        "energy_per_image": record.energy_per_output,
    }
    if record.plan.task.is_video:
        out.update({
            "total_videos": record.total_outputs,
            "throughput_videos_per_sec": record.throughput,
            "avg_time_per_video": record.time_per_output,
            "energy_per_video": record.energy_per_output,
        })
    return out


def _run_facts(record: RunRecord) -> dict:
    plan = record.plan
    measured = record.energy_measured
    return {
        "task": plan.task.name,
        "energy_measured": measured,
        "ulysses_degree": plan.ulysses_degree,
        "ring_degree": plan.ring_degree,
        "num_processes": plan.world_size,
        "num_gpus": record.num_gpus,
        "gpu_model": record.gpu_model,
        "guidance_scale": plan.guidance_scale,
        "weights": plan.weights,
        "dtype": plan.dtype,
        "max_sequence_length": plan.max_sequence_length,
        "prompt_source": record.prompt_source,
        **resolve.results_fields(plan.spec, plan.prompts),
        "average_power_watts": record.average_power,
        "latency_per_iteration": stats.summarize(record.times),
        "energy_per_iteration": stats.summarize(record.energies) if measured else None,
    }


def _iteration(r: IterationRecord, outputs_key: str) -> dict:
    entry = {"index": r.index, "time": r.measurement.time,
             "energy": r.measurement.total_gpu_energy, "gpu_energy": r.measurement.gpu_energy,
             "prompts": r.prompts, outputs_key: r.outputs}
    if r.window:
        entry.update(start_time=r.window[0], end_time=r.window[1])
    if r.stages:
        entry.update(r.stages.to_results())
    return entry


def video_writer_problem() -> str | None:
    """Why diffusers' `export_to_video` could not write a video here, or None. It writes through
    imageio's ffmpeg plugin when imageio is installed (and fails at the first video when that
    plugin finds no ffmpeg), else through OpenCV."""
    import importlib.util

    if importlib.util.find_spec("imageio") is not None:
        try:
            import imageio

            imageio.plugins.ffmpeg.get_exe()
        except Exception as err:  # noqa: BLE001 - any failure here is the first video's
            return (f"saving videos needs ffmpeg through imageio-ffmpeg, which is missing or finds "
                    f"no ffmpeg ({type(err).__name__}: {err})")
        return None
    if importlib.util.find_spec("cv2") is None:
        return "saving videos needs imageio with imageio-ffmpeg (or OpenCV); neither is installed"
    return None


def check_outputs_can_be_saved(plan: RunPlan) -> None:
    """Before any model loads: a run that keeps its videos must be able to write them (a video
    writer found missing at the first measured iteration used to fail the run there)."""
    if not (plan.save_images and plan.task.is_video):
        return
    problem = video_writer_problem()
    if problem is not None:
        from mlenergy.diffusion.inputs.config import ConfigError

        raise ConfigError(f"{problem}: pip install imageio-ffmpeg, or pass --no_save_images")


def save_outputs(plan: RunPlan, rank: int, iteration: int, batch: list[str], outputs,
                 all_gather) -> list[str]:
    """Save one iteration's images or videos, outside its measurement window, from one rank:
    the first that holds them (xDiT returns them on some ranks only, or on all)."""
    holders = all_gather(outputs is not None)
    if not plan.save_images or True not in holders or holders.index(True) != rank:
        return []
    task = plan.task
    out_dir = plan.run_dir / task.output_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for index, (prompt, output) in enumerate(zip(batch, outputs)):
        name = output_name(iteration, index, prompt, task.file_suffix)
        if task.is_video:
            from diffusers.utils import export_to_video

            export_to_video(list(output), str(out_dir / name), fps=plan.fps)
        else:
            output.save(out_dir / name)
        names.append(f"{task.output_dir}/{name}")
    return names
