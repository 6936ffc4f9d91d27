"""Benchmark a diffusion model: latency and GPU energy per image or video, through xDiT.

    torchrun --nproc_per_node=N mlenergy/diffusion/benchmark.py [flags] workload:text-to-image ...
    python -m mlenergy.diffusion.benchmark [flags] workload:text-to-image ...   (one process)
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Started as a script: import the package from the checkout, not from this folder (whose
    # module names would otherwise shadow installed packages).
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[0] = _root

import dataclasses
import logging
import time
from datetime import datetime
from typing import Any

os.environ.setdefault("XDIT_LOGGING_LEVEL", "WARNING")
# transformers warns about optional image backends when xfuser imports it; keep stderr for what
# matters (an error found after the prompts are read must stay one line).
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from mlenergy.diffusion import files, model_info, resolve, results, runtime
from mlenergy.diffusion import prompts as prompt_source
from mlenergy.diffusion.config import parse_cli
from mlenergy.diffusion.plan import ConfigError, RunPlan, make_plan

logger = logging.getLogger("mlenergy.diffusion")


def main(argv: list[str] | None = None) -> int:
    config = parse_cli(argv)
    try:
        plan = make_plan(config)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if (plan.run_dir / results.RESULTS).exists() and not config.overwrite_results:
        print(f"{plan.run_dir / results.RESULTS} already exists; skipping this run "
              "(pass --overwrite_results to measure it again)")
        return 0
    rank = runtime.launched_ranks()[0]
    try:
        run(plan)
    except ConfigError as err:
        # Input found bad once the prompts are known (before any model loads or file is written).
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    except BaseException as err:
        if isinstance(err, SystemExit) and not err.code:
            raise
        runtime.die(rank, err)
    return 0


def run(plan: RunPlan) -> None:
    from mlenergy.diffusion import environment, quality

    started = datetime.now()
    ranks = runtime.init_process_group(plan.device_type)
    schedule, source, prompts_note = _prompts(plan, ranks)
    if plan.reference is not None:
        quality.check_prompts(plan.config.reference_run, plan.reference, schedule.measured)
    _setup_logging(plan, ranks)
    env = environment.describe(plan.device_type, ranks.local_world_size)
    logger.info("Run directory: %s", plan.run_dir)
    logger.info("Plan: %s", _describe_plan(plan))
    logger.info("Environment: %s", env)
    logger.info("%s", prompts_note)
    logger.info("%s", resolve.describe(plan.spec))
    if ranks.is_main:
        files.write_json_atomically(
            plan.run_dir / results.REQUESTS,
            results.requests_document(plan, schedule.warmup, schedule.measured),
        )

    loaded = _load_pipeline(plan, ranks)
    probes = _Probes.start(plan, ranks, loaded.pipeline)
    warmup = _warm_up(plan, ranks, loaded.pipeline, schedule.warmup, probes)
    measured = _measure(plan, ranks, loaded.pipeline, schedule.measured, probes)
    _write_results(plan, ranks, started=started, env=env, prompt_source=source, loaded=loaded,
                   probes=probes, warmup=warmup, measured=measured)
    runtime.barrier()
    runtime.shutdown()


@dataclasses.dataclass
class _Loaded:
    pipeline: Any
    seconds: float
    denoiser_parameters: int
    parameter_gb: float
    fp8_t5: dict | None
    attention: dict
    compiled: str | None


def _load_pipeline(plan: RunPlan, ranks) -> _Loaded:
    """Build the pipeline (with the options that change its weights or placement) and hand it to
    xDiT."""
    import torch

    from mlenergy.diffusion import measurement, options, pipelines, xdit

    engine = xdit.engine_config(plan)
    with measurement.Stopwatch() as loading:
        dtype = getattr(torch, plan.dtype)
        built = pipelines.build_pipeline(plan.spec, plan.weights, dtype=dtype,
                                         device=ranks.device,
                                         max_sequence_length=plan.max_sequence_length,
                                         denoiser_cls=xdit.denoiser_class(plan))
        denoiser_parameters = pipelines.denoiser_parameter_count(built, plan.spec.family)
        fp8_t5 = options.quantize_t5_to_fp8(plan, built)
        parameter_gb = pipelines.parameter_bytes(built) / 1e9
        denoiser = getattr(built, plan.spec.family.denoiser_slot)
        options.select_attention_backend(plan, denoiser)
        pipeline = xdit.wrap_pipeline(plan, built, engine)
        # After wrapping: xDiT may have replaced the denoiser with its parallel wrapper.
        denoiser = getattr(built, plan.spec.family.denoiser_slot)
        compiled = options.compile_denoiser(plan, denoiser)
        options.enable_offload(plan, built, ranks.device)
    logger.info("Pipeline ready in %.1f s: %.3f B denoiser parameters, %.2f GB of weights",
                loading.seconds, denoiser_parameters / 1e9, parameter_gb)
    attention = options.attention_report(plan, denoiser)
    logger.info("Attention: %s", attention["used"])
    if compiled:
        logger.info("Compiling at the first call: %s", compiled)
    return _Loaded(pipeline=pipeline, seconds=loading.seconds,
                   denoiser_parameters=denoiser_parameters, parameter_gb=parameter_gb,
                   fp8_t5=fp8_t5, attention=attention, compiled=compiled)


@dataclasses.dataclass
class _Probes:
    """Everything that watches the run: energy windows, power and temperature timelines, the
    GPUs' exclusivity and idle power, the stage and step hooks, and compilation counters."""

    meter: Any
    monitor: Any
    exclusivity: dict | None
    idle_window: Any
    recorder: Any
    compiles: Any

    @classmethod
    def start(cls, plan: RunPlan, ranks, pipeline) -> _Probes:
        from mlenergy.diffusion import (
            gpu_checks,
            measurement,
            options,
            stages,
            timeline,
        )

        meter = measurement.EnergyMeter(ranks)
        monitor = timeline.TimelineMonitor(ranks)
        exclusivity = gpu_checks.check_run_gpus(ranks, plan.config.require_exclusive_gpus)
        # Before the hooks go in, with nothing running on the run's GPUs.
        idle_window = timeline.idle_baseline_window(plan.config.idle_baseline_s, ranks)
        recorder = stages.StageRecorder(pipeline, ranks, plan.inference_steps)
        logger.info("Stage hooks: %s; step-end callback %s", recorder.describe(),
                    "passed to the pipeline" if recorder.accepts_step_callback else "not taken")
        return cls(meter=meter, monitor=monitor, exclusivity=exclusivity,
                   idle_window=idle_window, recorder=recorder,
                   compiles=options.CompileTracker())


@dataclasses.dataclass
class _WarmUp:
    seconds: float
    iteration_times: list[float]
    compiles: list[tuple]


def _warm_up(plan: RunPlan, ranks, pipeline, batches: list[list[str]],
             probes: _Probes) -> _WarmUp:
    """Unmeasured calls at the measured shapes (compilation happens here), with other prompts
    and seeds than the measured ones."""
    from mlenergy.diffusion import measurement, xdit

    recorder, compiles = probes.recorder, probes.compiles
    times: list[float] = []
    compiled: list[tuple] = []
    with measurement.Stopwatch() as warming:
        for i, batch in enumerate(batches):
            before = compiles.snapshot()
            with measurement.Stopwatch() as one:
                recorder.begin_iteration()
                xdit.generate(pipeline, plan, batch, seed=plan.seed - 1 - i, device=ranks.device,
                              steps=plan.warmup_steps, extra_kwargs=recorder.call_kwargs())
                runtime.synchronize(ranks.device)
                recorder.end_iteration()
            times.append(one.seconds)
            compiled.append(compiles.difference(before, compiles.snapshot()))
    logger.info("Warm-up: %d iteration(s) of %d step(s) in %.1f s (%s)", len(batches),
                plan.warmup_steps, warming.seconds, ", ".join(f"{t:.2f} s" for t in times))
    if plan.config.use_torch_compile and compiled and compiled[-1][0]:
        logger.warning("The last warm-up iteration still compiled %d graph(s): measured "
                       "iterations may compile too; raise --warmup_iters", compiled[-1][0])
    # The warm-up showed which stage boundaries every rank crosses.
    logger.info("Stage boundaries fenced with %s", recorder.settle_fencing())
    return _WarmUp(seconds=warming.seconds, iteration_times=times, compiles=compiled)


@dataclasses.dataclass
class _Measured:
    records: list
    stage_records: list[dict]
    whole: Any
    window: tuple[float, float]
    nvml_reads: tuple
    compiles: tuple


def _measure(plan: RunPlan, ranks, pipeline, batches: list[list[str]],
             probes: _Probes) -> _Measured:
    """The measured iterations, each in its own energy window inside one for them all; outputs
    are saved between windows."""
    from tqdm import tqdm

    from mlenergy.diffusion import gpu_checks, measurement, xdit

    meter, recorder, compiles = probes.meter, probes.recorder, probes.compiles
    measurement.reset_peak_memory(ranks.device)
    records: list[results.IterationRecord] = []
    stage_records: list[dict] = []
    before_measuring = compiles.snapshot()
    meter.begin("benchmark")
    window_start = time.time()
    nvml_before = gpu_checks.read_nvml_energy(ranks)
    for i, batch in enumerate(tqdm(batches, desc="iterations", disable=not ranks.is_main)):
        _inject_failure_for_tests(ranks.rank, i)
        meter.begin(f"iteration-{i}")
        started_at = time.time()
        recorder.begin_iteration()
        outputs = xdit.generate(pipeline, plan, batch, seed=plan.seed + i, device=ranks.device,
                                extra_kwargs=recorder.call_kwargs())
        window = meter.end(f"iteration-{i}")
        ended_at = time.time()
        stage_records.append(recorder.record(recorder.end_iteration()))
        saved = _save_outputs(plan, ranks, i, batch, outputs)
        records.append(results.IterationRecord(index=i, measurement=window, prompts=batch,
                                               images=saved, window=(started_at, ended_at)))
        if ranks.is_main:
            logger.info("iteration %d: %.3f s, %s", i, window.time,
                        _energy_text(window.total_gpu_energy))
    whole = meter.end("benchmark")
    window_end = time.time()
    nvml_after = gpu_checks.read_nvml_energy(ranks)
    recorder.remove()
    measured_compiles = compiles.difference(before_measuring, compiles.snapshot())
    if plan.config.use_torch_compile and measured_compiles[0]:
        logger.warning("torch.compile compiled %d graph(s) during measured iterations: their "
                       "times include compilation; raise --warmup_iters", measured_compiles[0])
    return _Measured(records=records, stage_records=stage_records, whole=whole,
                     window=(window_start, window_end), nvml_reads=(nvml_before, nvml_after),
                     compiles=measured_compiles)


def _write_results(plan: RunPlan, ranks, *, started: datetime, env: dict, prompt_source: str,
                   loaded: _Loaded, probes: _Probes, warmup: _WarmUp,
                   measured: _Measured) -> None:
    """Gather what every rank saw, and write results.json, model_info.json and the plot on
    rank 0. FLOPs are counted here, after the measured windows."""
    from mlenergy.diffusion import (
        analysis,
        environment,
        flops,
        measurement,
        options,
        quality,
        stages,
        timeline,
    )

    records, recorder = measured.records, probes.recorder
    window_start, window_end = measured.window
    flop_counts = None
    if plan.config.count_flops:
        flop_counts = flops.count_on_every_rank(recorder.first_denoiser_call, ranks,
                                                fail_softly=plan.world_size == 1)
    timeline_block = timeline.merge_blocks(
        # Every sample from the monitor's start: a value holds until the next sample, so the
        # one before a window's start is needed to know the power there.
        runtime.all_gather_object(probes.monitor.block(None, window_end)),
        window_start, window_end)
    probes.monitor.stop()
    stage_records = stages.combine_ranks(runtime.all_gather_object(measured.stage_records),
                                         ranks.local_world_size)
    nvml_reads = runtime.all_gather_object(measured.nvml_reads)
    peaks = runtime.all_gather_object(measurement.peak_memory_gb(ranks.device))
    saved_by_rank = runtime.all_gather_object([r.images for r in records])
    if not ranks.is_main:
        return
    for record in records:
        record.images = next((names[record.index] for names in saved_by_rank
                              if names[record.index]), [])
    option_results = {
        "warmup_iteration_times": warmup.iteration_times,
        "compile": options.compile_report(plan, warmup.iteration_times, warmup.compiles,
                                          measured.compiles,
                                          [r.measurement.time for r in records],
                                          loaded.compiled),
        "fp8_t5_encoder": loaded.fp8_t5,
        "attention": loaded.attention,
    }
    if plan.reference is not None:
        option_results["quality"] = quality.quality_report(
            plan.run_dir, plan.config.reference_run, plan.reference, [r.images for r in records])
    for record, stage_record in zip(records, stage_records):
        stages.add_remainder(stage_record, record.measurement.total_gpu_energy)
        record.stages = stage_record
    sections = analysis.measurement_sections(
        plan, records=records, whole_run=measured.whole,
        gpu_model=environment.device_model(env), flop_counts=flop_counts,
        denoiser=recorder.parts["denoising"][0], fence_mode=recorder.fence_mode,
        timeline_block=timeline_block, idle_window=probes.idle_window,
        exclusivity=probes.exclusivity, nvml_reads=nvml_reads,
        benchmark_window=measured.window)
    doc = results.results_document(
        plan, started=started, iterations=records, whole_run=measured.whole, environment=env,
        gpu_model=environment.device_model(env), prompt_source=prompt_source,
        peak_memory_gb=peaks, parameter_memory_gb=loaded.parameter_gb,
        load_time_s=loaded.seconds, warmup_time_s=warmup.seconds,
        benchmark_window=measured.window, timeline=timeline_block,
        measurement_sections=sections, extra=option_results,
    )
    logger.info("%s", model_info.write_model_info(plan.base_dir, plan.spec, plan.weights,
                                                  plan.dtype))
    files.write_json_atomically(plan.run_dir / results.RESULTS, doc)
    plot = timeline.plot_run(doc, plan.run_dir / timeline.PLOT)
    if plot is not None:
        logger.info("Power plot: %s", plot)
    logger.info("Summary\n%s", results.summary_table(doc))
    logger.info("Results written to %s", plan.run_dir / results.RESULTS)


def _prompts(plan: RunPlan, ranks):
    """Rank 0 reads the prompt pool; every rank gets the same schedule from it. Runs before
    logging is set up (the run directory must not exist yet if the reference check fails), so
    the line to log comes back with it."""
    workload = plan.config.workload
    payload = None
    if ranks.is_main:
        if workload.prompts_file is not None:
            pool = prompt_source.PromptPool(prompt_source.read_prompts_file(workload.prompts_file),
                                            f"file:{workload.prompts_file}")
        else:
            pool = prompt_source.load_pool(workload.prompt_dataset, workload.prompt_cache_dir,
                                             task=plan.task)
        payload = (pool.prompts, pool.source)
    pool_prompts, source = runtime.broadcast_object(payload)
    schedule = prompt_source.schedule_for(workload, pool_prompts, plan.seed, plan.batch_size,
                                          plan.warmup_iters, plan.benchmark_iters)
    note = (f"Prompts: {len(pool_prompts)} from {source}"
            + (" (fewer than the run needs: some repeat)" if schedule.wrapped else ""))
    return schedule, source, note


def _save_outputs(plan: RunPlan, ranks, iteration: int, batch: list[str], outputs) -> list[str]:
    """Save one iteration's images or videos, outside its measurement window, from one rank:
    the first that holds them (xDiT returns them on some ranks only, or on all)."""
    holders = runtime.all_gather_object(outputs is not None)
    if not plan.config.save_images or True not in holders or holders.index(True) != ranks.rank:
        return []
    video = plan.task == "text-to-video"
    folder = results.VIDEO_DIR if video else results.IMAGE_DIR
    out_dir = plan.run_dir / folder
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for index, (prompt, output) in enumerate(zip(batch, outputs)):
        name = results.output_name(iteration, index, prompt, "mp4" if video else "png")
        if video:
            from diffusers.utils import export_to_video

            export_to_video(list(output), str(out_dir / name), fps=plan.fps)
        else:
            output.save(out_dir / name)
        names.append(f"{folder}/{name}")
    return names


def _inject_failure_for_tests(rank: int, iteration: int) -> None:
    """MLENERGY_FAIL_RANK=R makes rank R raise at its first measured iteration. The test suite
    uses it to check that one failing rank ends the whole run promptly."""
    if iteration == 0 and os.environ.get("MLENERGY_FAIL_RANK") == str(rank):
        raise RuntimeError(f"failure injected on rank {rank} by MLENERGY_FAIL_RANK")


def _energy_text(joules: float | None) -> str:
    return "energy not measured" if joules is None else f"{joules:,.1f} J"


def _describe_plan(plan: RunPlan) -> str:
    return (f"{plan.spec.model_id} [{plan.weights}, {plan.dtype}] {plan.task} batch "
            f"{plan.batch_size} {plan.height}x{plan.width} steps {plan.inference_steps} "
            f"guidance {plan.guidance_scale} seed {plan.seed}; ulysses {plan.ulysses_degree} "
            f"x ring {plan.ring_degree} on {plan.world_size} process(es) ({plan.device_type}); "
            f"warm-up {plan.warmup_iters}, measured {plan.benchmark_iters}; "
            f"options {results.configurations(plan)}")


def _setup_logging(plan: RunPlan, ranks) -> None:
    for name in ("diffusers", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    fmt = logging.Formatter(f"%(asctime)s [rank {ranks.rank}] %(levelname)s %(message)s")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(fmt)
    console.setLevel(logging.INFO if ranks.is_main else logging.WARNING)
    logger.addHandler(console)
    if ranks.is_main:
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        log_file = logging.FileHandler(plan.run_dir / results.DRIVER_LOG, mode="w")
        log_file.setFormatter(fmt)
        logger.addHandler(log_file)


if __name__ == "__main__":
    sys.exit(main())
