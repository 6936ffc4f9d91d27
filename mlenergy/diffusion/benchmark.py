"""Benchmark a diffusion model: latency and GPU energy per image or video, through xDiT.

    torchrun --nproc_per_node=N mlenergy/diffusion/benchmark.py [flags] workload:t2i ...
    python -m mlenergy.diffusion.benchmark [flags] workload:t2i ...   (one process)
"""

from __future__ import annotations

import os
import sys

if __package__ in (None, ""):
    # Started as a script: import the package from the checkout, not from this folder (whose
    # module names would otherwise shadow installed packages).
    _root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path[0] = _root

from mlenergy.diffusion.process.lifeline import bind_to_launcher

# First, before the slow imports: a rank must not outlive a launcher killed meanwhile.
bind_to_launcher()

import dataclasses
import logging
import time
from datetime import datetime
from typing import Any

from mlenergy.diffusion.inputs import argcheck
from mlenergy.diffusion.inputs.config import ConfigError, parse_cli
from mlenergy.diffusion.models import resolve
from mlenergy.diffusion.output import (
    describe, model_info, provenance, results_writer as results, rundir,
)
from mlenergy.diffusion.output.record import IterationRecord, LoadRecord, RunRecord, WarmupRecord
from mlenergy.diffusion.output.startup import StartupClock
from mlenergy.diffusion.planning import prompts as prompt_source, shared_pipeline as group
from mlenergy.diffusion.planning.plan import RunPlan, make_plan
from mlenergy.diffusion.process import console, launch, runtime
from mlenergy.diffusion.profiling import point_profile
from mlenergy.diffusion.results import files

logger = logging.getLogger("mlenergy.diffusion")


def main(argv: list[str] | None = None) -> int:
    clock = StartupClock()  # imports end here
    argv = sys.argv[1:] if argv is None else argv
    if not {"-h", "--help"} & set(argv):
        try:
            # First: the command line's errors are printed by rank 0, found from these.
            launch.check_environment()
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)  # on every rank: each has its own values
            return 2
    rank = launch.launched_rank()
    try:
        point_argvs = group.split_points(argv)
    except group.GroupError as err:
        if rank == 0:
            print(f"error: {err}", file=sys.stderr)
        return 2
    with clock.process_phase("inputs"):
        configs = [parse_cli(point, quiet=rank != 0) for point in point_argvs]
    console.start(verbose=any(c.verbose for c in configs))
    try:
        with clock.process_phase("inputs"):
            plans = [make_plan(config) for config in configs]
            for plan in plans:
                results.check_outputs_can_be_saved(plan)
            if len(plans) > 1:
                group.check_one_pipeline([p.run_dir for p in plans],
                                         [rundir.identity(p) for p in plans])
    except (ConfigError, OSError, group.GroupError) as err:
        if rank == 0:  # every rank finds the same fault: one line says it
            print(f"error: {argcheck.path_error_line(err)}", file=sys.stderr)
        return 2
    try:
        run(plans, clock)
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


@dataclasses.dataclass
class _Point:
    """A point this process measures: its plan, its claim on the run directory, its prompts."""

    plan: RunPlan
    claim: rundir.Claim
    schedule: Any
    prompt_source: str
    prompts_note: tuple[str, bool]


@dataclasses.dataclass
class _Shared:
    """What the points of one process share: the pipeline, as loaded once, and the baseline."""

    pipeline: Any
    loaded: LoadRecord
    baseline: Any


def run(plans: list[RunPlan], clock: StartupClock | None = None) -> None:
    """One process, one or more points (`--then`): every point's run directory is claimed and its
    prompts drawn first (bad input stops here, before any model loads); the pipeline is loaded
    once; then each point runs as if launched alone."""
    from mlenergy.diffusion.probes import RunGpus

    clock = clock or StartupClock()
    with clock.process_phase("process_group"):
        ranks = runtime.init_process_group(plans[0].launch)
    with clock.process_phase("inputs"):
        points = [p for p in (_take_point(plan, ranks) for plan in plans) if p is not None]
    gpus = RunGpus.for_ranks(ranks) if points else None
    shared = None
    for position, point in enumerate(points, start=1):
        shared = _measure_point(point, ranks, gpus, shared, clock, (len(points), position))
        clock.next_point(started=time.time())
    if shared is not None:
        shared.baseline.stop()
    shared = None  # the pipeline holds process groups, which shutdown must be able to let go
    runtime.shutdown()


def _take_point(plan: RunPlan, ranks) -> _Point | None:
    """Claim the point's run directory and draw its prompts; None when it is already done."""
    from mlenergy.diffusion.results import quality

    claim = rundir.claim(plan, ranks.is_main, runtime.broadcast_object)
    if claim.done:
        return None
    schedule, source, prompts_note = prompt_source.draw_for_run(
        plan, ranks.is_main, runtime.broadcast_object)
    if plan.reference is not None:
        quality.check_prompts(plan.reference_run, plan.reference, schedule.measured)
    return _Point(plan, claim, schedule, source, prompts_note)


def _measure_point(point: _Point, ranks, gpus, shared: _Shared | None, clock: StartupClock,
                  place: tuple[int, int]) -> _Shared:
    """One point: its log and requests, the pipeline (loaded by the first point), the probes,
    warm-up, the measured iterations, results. Returns what the next point shares."""
    from mlenergy.diffusion.probes import Probes
    from mlenergy.diffusion.process import testing

    # A run starts with its process (as when launched alone); a later point of the process
    # where the one before it ended.
    started = datetime.fromtimestamp(clock.main_entered if place[1] == 1
                                     else clock.point_started)
    plan, schedule = point.plan, point.schedule
    with clock.point_phase("setup"):
        env, origin = _start_logs(point, ranks, gpus, shared)
    if shared is None:
        shared = _load_once(plan, ranks, gpus, clock)
    with clock.point_phase("setup"):
        probes = Probes.start(plan, shared.baseline, shared.pipeline, first=place[1] == 1)
        pipeline = testing.with_test_hooks(shared.pipeline, ranks.rank, len(schedule.warmup),
                                           plan.batch_size)
    with clock.point_phase("warmup"):
        warmup = _warm_up(plan, ranks, pipeline, schedule.warmup, probes)
    measured = _measure(plan, ranks, pipeline, schedule.measured, probes)
    profiles = point_profile.profile_point(plan, ranks, gpus, pipeline, schedule.measured[0])
    record = _gather(plan, probes, measured, started=started, env=env,
                     prompt_source=point.prompt_source, loaded=shared.loaded, warmup=warmup)
    # The last collective. Rank 0 writes alone after it: no rank waits (within the collective
    # timeout) for a slow analysis, plot or file system, and fails a run whose results are whole.
    runtime.barrier()
    if record is not None:
        record.provenance = origin
        record.profile = point_profile.with_measured_windows(profiles,
                                                             record.observations.stages)
        record.startup = clock.section(*place, first_window_start=measured.window[0],
                                       warmup=warmup)
        _write_results(record)
    point.claim.release()
    return shared


def _start_logs(point: _Point, ranks, gpus, shared: _Shared | None) -> tuple[dict, dict]:
    """The point's driver log and requests.json, and what it says about where it runs."""
    from mlenergy.diffusion.output import environment

    plan = point.plan
    moved = point.claim.clear()
    console.log_to_file(plan.run_dir / files.DRIVER_LOG, ranks.is_main)
    if moved is not None:
        logger.info("What the run directory held is now in %s", moved)
    env = environment.describe(gpus)
    logger.info("Run directory: %s", plan.run_dir)
    logger.info("Plan: %s", describe.plan_line(plan))
    console.log_to_file_only("Plan in full:\n%s", describe.plan_in_full(plan))
    logger.info("Environment: %s", describe.environment_text(env))
    origin = provenance.describe()
    logger.info("Provenance: %s", describe.provenance_text(origin))
    note, warns = point.prompts_note
    logger.log(logging.WARNING if warns else logging.INFO, "%s", note)
    logger.info("%s", resolve.describe(plan.spec))
    if shared is not None:
        logger.info("Pipeline: the one this process loaded for its first point (in %.1f s), "
                    "shared by its points", shared.loaded.seconds)
    if ranks.is_main:
        files.write_json_atomically(
            plan.run_dir / files.REQUESTS,
            results.requests_document(plan, point.schedule.warmup, point.schedule.measured))
    return env, origin


def _load_once(plan: RunPlan, ranks, gpus, clock: StartupClock) -> _Shared:
    """The pipeline and the baseline that every point of the process shares."""
    from mlenergy.diffusion.probes import Baseline

    with clock.process_phase("load"):
        pipeline, loaded = _load_pipeline(plan, ranks)
    with clock.process_phase("idle_baseline"):
        # Before any hook goes in, with nothing running on the run's GPUs.
        baseline = Baseline.take(gpus, plan.idle_baseline_s)
    return _Shared(pipeline, loaded, baseline)


def _load_pipeline(plan: RunPlan, ranks) -> tuple[Any, LoadRecord]:
    """Build the pipeline (with the options that change its weights or placement) and hand it to
    xDiT. Returns the pipeline and what loading it took."""
    import torch

    from mlenergy.diffusion.engine import options_apply, xdit
    from mlenergy.diffusion.models import pipelines

    engine = xdit.engine_config(plan)
    logger.info("Loading %s (%s weights) ...", plan.spec.model_id, plan.weights)
    console.quiet_loading_bars()
    with runtime.Stopwatch() as loading:
        # Offloaded weights live in host memory: built there, they need not fit the GPU too.
        built = pipelines.build_pipeline(plan.spec, plan.weights, dtype=getattr(torch, plan.dtype),
                                         device="cpu" if plan.options.enable_sequential_cpu_offload
                                         else ranks.device,
                                         max_sequence_length=plan.max_sequence_length,
                                         denoiser_cls=xdit.denoiser_class(plan))
        slot = plan.spec.family.denoiser_slot
        denoiser_parameters = pipelines.denoiser_parameter_count(built, plan.spec.family)
        effects = options_apply.prepare_weights(plan, built, getattr(built, slot))
        parameter_gb = pipelines.parameter_bytes(built) / 1e9
        pipeline = xdit.wrap_pipeline(plan, built, engine)
        # After wrapping: xDiT may have replaced the denoiser with its parallel wrapper.
        denoiser = getattr(built, slot)
        compiled = options_apply.finish_pipeline(plan, built, denoiser, ranks.device, effects)
    logger.info("Pipeline ready in %.1f s: denoiser of %s, %s of weights", loading.seconds,
                console.count_text(denoiser_parameters, "parameters"),
                console.bytes_text(parameter_gb * 1e9))
    effects["attention"] = options_apply.attention_report(plan, denoiser)
    logger.info("Attention: %s", effects["attention"]["used"])
    if compiled:
        logger.info("Compiling at the first call: %s", compiled)
    return pipeline, LoadRecord(seconds=loading.seconds, denoiser_parameters=denoiser_parameters,
                                parameter_gb=parameter_gb,
                                option_effects=options_apply.OptionEffects.from_results(effects),
                                compiled=compiled)


def _warm_up(plan: RunPlan, ranks, pipeline, batches: list[list[str]], probes) -> WarmupRecord:
    """Unmeasured calls at the measured shapes (compilation happens here), with other prompts
    and seeds than the measured ones."""
    from mlenergy.diffusion.engine import xdit

    recorder, compiles, steps = probes.recorder, probes.compiles, console.StepProgress.of_recorder(probes.recorder, ranks.is_main)
    times: list[float] = []
    compiled: list[tuple] = []
    with runtime.Stopwatch() as warming:
        for i, batch in enumerate(batches):
            if i == 0 and plan.options.use_torch_compile:
                logger.info("Compiling the denoiser (first call; can take minutes) ...")
            before = compiles.snapshot()
            with runtime.Stopwatch() as one:
                probes.begin_iteration(measured=False)
                steps.begin(f"warm-up {i + 1}/{len(batches)}", plan.warmup_steps)
                xdit.generate(pipeline, plan, batch, seed=plan.seed - 1 - i, device=ranks.device,
                              steps=plan.warmup_steps, extra_kwargs=recorder.call_kwargs())
                runtime.synchronize(ranks.device)
                steps.end()
                probes.end_iteration(measured=False)
            times.append(one.seconds)
            compiled.append(compiles.difference(before, compiles.snapshot()))
    logger.info("Warm-up: %d iteration(s) of %d step(s) in %.1f s (%s)", len(batches),
                plan.warmup_steps, warming.seconds, ", ".join(f"{t:.2f} s" for t in times))
    if plan.options.use_torch_compile and compiled and compiled[-1][0]:
        logger.warning("The last warm-up iteration still compiled %d graph(s): measured "
                       "iterations may compile too; raise --warmup_iters", compiled[-1][0])
    # The warm-up showed which stage boundaries every rank crosses.
    logger.info("Stage boundaries fenced with %s", recorder.settle_fencing())
    return WarmupRecord(seconds=warming.seconds, iteration_times=times, compiles=compiled)


@dataclasses.dataclass
class _Measured:
    records: list[IterationRecord]
    whole: Any
    window: tuple[float, float]
    nvml_reads: tuple
    compiles: tuple


def _measure(plan: RunPlan, ranks, pipeline, batches: list[list[str]], probes) -> _Measured:
    """The measured iterations, each in its own energy window inside one for them all; outputs
    are saved between windows."""
    from mlenergy.diffusion.engine import xdit
    from mlenergy.diffusion.probes import checks, memory

    meter, recorder, compiles = probes.meter, probes.recorder, probes.compiles
    steps = console.StepProgress.of_recorder(probes.recorder, ranks.is_main)
    memory.reset_peak_memory(ranks.device)
    records: list[IterationRecord] = []
    before_measuring = compiles.snapshot()
    meter.begin("benchmark")
    nvml_before = checks.read_nvml_energy(probes.gpus)
    for i, batch in enumerate(console.progress(batches, "iterations", ranks.is_main)):
        meter.begin(f"iteration-{i}")
        probes.begin_iteration(measured=True)
        steps.begin(f"iteration {i + 1}/{len(batches)}", plan.inference_steps)
        outputs = xdit.generate(pipeline, plan, batch, seed=plan.seed + i, device=ranks.device,
                                extra_kwargs=recorder.call_kwargs())
        window = meter.end(f"iteration-{i}")
        steps.end()
        probes.end_iteration(measured=True)
        saved = results.save_outputs(plan, ranks.rank, i, batch, outputs,
                                     runtime.all_gather_object)
        records.append(IterationRecord(index=i, measurement=window, prompts=batch,
                                       outputs=saved, window=meter.bounds[f"iteration-{i}"]))
        if ranks.is_main:
            logger.info("iteration %d: %.3f s, %s", i, window.time,
                        console.energy_text(window.total_gpu_energy))
    whole = meter.end("benchmark")
    nvml_after = checks.read_nvml_energy(probes.gpus)
    recorder.remove()
    measured_compiles = compiles.difference(before_measuring, compiles.snapshot())
    if plan.options.use_torch_compile and measured_compiles[0]:
        logger.warning("torch.compile compiled %d graph(s) during measured iterations: their "
                       "times include compilation; raise --warmup_iters", measured_compiles[0])
    return _Measured(records=records, whole=whole,
                     window=meter.bounds["benchmark"], nvml_reads=(nvml_before, nvml_after),
                     compiles=measured_compiles)


def _gather(plan: RunPlan, probes, measured: _Measured, *, started: datetime, env,
            prompt_source: str, loaded: LoadRecord, warmup: WarmupRecord) -> RunRecord | None:
    """What every rank saw, in one record on rank 0 (None on the others). FLOPs are counted
    here, after the measured windows."""
    from mlenergy.diffusion.engine import options_apply
    from mlenergy.diffusion.output import node_sharing as sharing
    from mlenergy.diffusion.output.record import QualityReport
    from mlenergy.diffusion.probes.protocol import MeasuredPhase
    from mlenergy.diffusion.results import quality

    records = measured.records
    gpu_model = env.device_model
    sections = probes.gather(MeasuredPhase(window=measured.window,
                                           iterations=[r.measurement for r in records],
                                           whole=measured.whole, nvml_reads=measured.nvml_reads),
                             gpu_model=gpu_model)
    saved_by_rank = runtime.all_gather_object([r.outputs for r in records])
    if sections is None:
        return None
    for record in records:
        record.outputs = next((names[record.index] for names in saved_by_rank
                               if names[record.index]), [])
    for record, stages in zip(records, sections.stages.iterations):
        record.stages = stages
    record = RunRecord(
        plan=plan, started=started, environment=env, gpu_model=gpu_model,
        num_gpus=probes.gpus.total, prompt_source=prompt_source, load=loaded, warmup=warmup,
        iterations=records, whole=measured.whole, window=measured.window,
        observations=sections,
        compile=options_apply.compile_report(plan, warmup.iteration_times, warmup.compiles,
                                             measured.compiles, [r.measurement.time for r in records],
                                             loaded.compiled))
    record.shared_node_runs = sharing.runs_sharing_node(plan.run_dir, *measured.window)
    if plan.reference is not None:
        record.quality = QualityReport.from_results(quality.quality_report(
            plan.run_dir, plan.reference_run, plan.reference, [r.outputs for r in records]))
    return record


def _write_results(record: RunRecord) -> None:
    """The record's analysis, then results.json, model_info.json, the plot and the summary."""
    from mlenergy.diffusion.output import analysis, power_plot, summary

    plan = record.plan
    record.analysis = analysis.analyze(record)
    logger.info("%s", model_info.write_model_info(plan.base_dir, plan.spec, plan.weights,
                                                  plan.dtype))
    files.write_json_atomically(plan.run_dir / files.RESULTS, results.results_document(record))
    plot = power_plot.plot_run(record, plan.run_dir / power_plot.PLOT)
    if plot is not None:
        logger.info("Power plot: %s", plot)
    console.show_result("Summary", summary.summary_table(record))
    logger.info("Results written to %s", plan.run_dir / files.RESULTS)

if __name__ == "__main__":
    from mlenergy.diffusion.process.console import exit_quietly_on_broken_pipe

    sys.exit(exit_quietly_on_broken_pipe(main))
