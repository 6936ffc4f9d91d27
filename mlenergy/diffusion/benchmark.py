"""Benchmark a diffusion model: latency and GPU energy per image, through xDiT.

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

import logging
import time
from datetime import datetime

os.environ.setdefault("XDIT_LOGGING_LEVEL", "WARNING")

from mlenergy.diffusion import prompts as prompt_source
from mlenergy.diffusion import files, results, runtime
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
    except BaseException as err:  # noqa: BLE001 - any failure must end this rank promptly
        if isinstance(err, SystemExit) and not err.code:
            raise
        runtime.die(rank, err)
    return 0


def run(plan: RunPlan) -> None:
    import torch
    from tqdm import tqdm

    from mlenergy.diffusion import (environment, measurement, pipelines, stages, timeline,
                                    xdit)

    started = datetime.now()
    ranks = runtime.init_process_group(plan.device_type)
    _setup_logging(plan, ranks)
    env = environment.describe(plan.device_type, ranks.local_world_size)
    logger.info("Run directory: %s", plan.run_dir)
    logger.info("Plan: %s", _describe_plan(plan))
    logger.info("Environment: %s", env)

    schedule, source = _prompts(plan, ranks)
    if ranks.is_main:
        files.write_json_atomically(
            plan.run_dir / results.REQUESTS,
            results.requests_document(plan, schedule.warmup, schedule.measured),
        )

    engine = xdit.engine_config(plan)
    with measurement.Stopwatch() as loading:
        dtype = getattr(torch, plan.dtype)
        built = pipelines.build_pipeline(plan.spec, plan.weights, dtype=dtype,
                                         device=ranks.device,
                                         max_sequence_length=plan.max_sequence_length)
        denoiser_parameters = pipelines.denoiser_parameter_count(built, plan.spec.family)
        parameter_gb = pipelines.parameter_bytes(built) / 1e9
        pipeline = xdit.wrap_pipeline(plan, built, engine)
    logger.info("Pipeline ready in %.1f s: %.3f B denoiser parameters, %.2f GB of weights",
                loading.seconds, denoiser_parameters / 1e9, parameter_gb)

    meter = measurement.EnergyMeter(ranks)
    monitor = timeline.TimelineMonitor(ranks)
    exclusivity = _check_exclusive_gpus(plan, ranks)
    idle_window = _idle_baseline(plan, ranks, monitor)

    recorder = stages.StageRecorder(pipeline, ranks, plan.inference_steps)
    logger.info("Stage hooks: %s; step-end callback %s", recorder.describe(),
                "passed to the pipeline" if recorder.accepts_step_callback else "not taken")
    with measurement.Stopwatch() as warming:
        for i, batch in enumerate(schedule.warmup):
            recorder.begin_iteration()
            xdit.generate(pipeline, plan, batch, seed=plan.seed - 1 - i, device=ranks.device,
                          extra_kwargs=recorder.call_kwargs())
            runtime.synchronize(ranks.device)
            recorder.end_iteration()
    logger.info("Warm-up: %d iteration(s) in %.1f s", len(schedule.warmup), warming.seconds)
    logger.info("Stage boundaries fenced with %s", recorder.settle_fencing())

    measurement.reset_peak_memory(ranks.device)
    records: list[results.IterationRecord] = []
    stage_records: list[dict] = []
    meter.begin("benchmark")
    window_start = time.time()
    nvml_before = _nvml_energy(ranks)
    for i, batch in enumerate(tqdm(schedule.measured, desc="iterations", disable=not ranks.is_main)):
        _inject_failure_for_tests(ranks.rank, i)
        meter.begin(f"iteration-{i}")
        started_at = time.time()
        recorder.begin_iteration()
        images = xdit.generate(pipeline, plan, batch, seed=plan.seed + i, device=ranks.device,
                               extra_kwargs=recorder.call_kwargs())
        window = meter.end(f"iteration-{i}")
        ended_at = time.time()
        stage_records.append(recorder.record(recorder.end_iteration()))
        saved = _save_images(plan, i, batch, images)
        record = results.IterationRecord(index=i, measurement=window, prompts=batch, images=saved,
                                         window=(started_at, ended_at))
        records.append(record)
        if ranks.is_main:
            logger.info("iteration %d: %.3f s, %s", i, window.time,
                        _energy_text(window.total_gpu_energy))
    whole = meter.end("benchmark")
    window_end = time.time()
    nvml_after = _nvml_energy(ranks)
    recorder.remove()

    flop_counts = _count_flops(plan, ranks, recorder)
    timeline_block = timeline.merge_blocks(
        runtime.all_gather_object(monitor.block(idle_window[0] if idle_window else window_start,
                                                window_end)),
        window_start, window_end)
    monitor.stop()
    stage_records = stages.combine_ranks(runtime.all_gather_object(stage_records),
                                         ranks.local_world_size)
    nvml_reads = runtime.all_gather_object((nvml_before, nvml_after))
    peaks = runtime.all_gather_object(measurement.peak_memory_gb(ranks.device))
    saved_by_rank = runtime.all_gather_object([r.images for r in records])
    if ranks.is_main:
        for record in records:
            record.images = next((names[record.index] for names in saved_by_rank
                                  if names[record.index]), [])
        for record, stage_record in zip(records, stage_records):
            stages.add_remainder(stage_record, record.measurement.time,
                                 record.measurement.total_gpu_energy)
            record.stages = stage_record
        measured = _measurement_sections(
            plan, env, records, whole, flop_counts, recorder, timeline_block, idle_window,
            exclusivity, nvml_reads, (window_start, window_end))
        doc = results.results_document(
            plan, started=started, iterations=records, whole_run=whole, environment=env,
            gpu_model=environment.device_model(env), prompt_source=source,
            peak_memory_gb=peaks, parameter_memory_gb=parameter_gb,
            load_time_s=loading.seconds, warmup_time_s=warming.seconds,
            benchmark_window=(window_start, window_end), timeline=timeline_block,
            measurement_sections=measured,
        )
        files.write_json_atomically(plan.base_dir / results.MODEL_INFO,
                                      results.model_info(plan, denoiser_parameters))
        files.write_json_atomically(plan.run_dir / results.RESULTS, doc)
        plot = timeline.plot_run(doc, plan.run_dir / timeline.PLOT)
        if plot is not None:
            logger.info("Power plot: %s", plot)
        summary = results.summary_table(doc)
        logger.info("Summary\n%s", summary)
        logger.info("Results written to %s", plan.run_dir / results.RESULTS)
    runtime.barrier()
    runtime.shutdown()


def _check_exclusive_gpus(plan: RunPlan, ranks) -> dict | None:
    """Other processes on the run's GPUs (NVML compute contexts whose PIDs are not our ranks');
    checked once the model is loaded, so that every rank holds its own context."""
    if plan.device_type != "cuda":
        return None
    from mlenergy.diffusion import gpu_checks

    own = set(runtime.all_gather_object(os.getpid()))
    report = None
    if ranks.is_local_main:
        report = gpu_checks.check_exclusive(ranks.local_world_size,
                                            ranks.node_rank * ranks.local_world_size, own,
                                            plan.config.require_exclusive_gpus)
    reports = [r for r in runtime.all_gather_object(report) if r is not None]
    return {"exclusive": all(r["exclusive"] for r in reports),
            "foreign_pids": {g: p for r in reports for g, p in r["foreign_pids"].items()},
            "pid_namespace_matches": all(r["pid_namespace_matches"] for r in reports)}


def _idle_baseline(plan: RunPlan, ranks, monitor) -> tuple[float, float] | None:
    """Every rank sleeps (a barrier would keep GPUs spinning in NCCL) while local rank 0's power
    monitor samples the idle GPUs."""
    seconds = plan.config.idle_baseline_s
    if seconds <= 0 or plan.device_type != "cuda":
        return None
    runtime.synchronize(ranks.device)
    runtime.barrier()
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    runtime.barrier()
    logger.info("Idle baseline: %.1f s", end - start)
    return start, end


def _nvml_energy(ranks) -> dict | None:
    """An independent read of NVML's energy counter on local rank 0 (GPU runs only)."""
    if ranks.device.type != "cuda" or not ranks.is_local_main:
        return None
    from mlenergy.diffusion import gpu_checks

    return gpu_checks.nvml_energy(ranks.local_world_size, ranks.node_rank * ranks.local_world_size)


def _count_flops(plan: RunPlan, ranks, recorder) -> list[dict] | None:
    """One denoiser forward under a FLOP counter, on every rank together (sequence parallelism
    splits it across them), with the inputs of the last measured iteration's first call."""
    captured = recorder.first_denoiser_call
    everyone = runtime.all_gather_object(captured is not None)
    if not plan.config.count_flops or not all(everyone):
        return None
    from mlenergy.diffusion import flops

    module, args, kwargs = captured
    runtime.synchronize(ranks.device)
    runtime.barrier()
    try:
        count = flops.count_forward(module, args, kwargs)
    except Exception as err:  # noqa: BLE001
        if plan.world_size > 1:
            raise  # the other ranks are inside the same forward: end the run rather than hang
        logger.warning("FLOP count failed (%s: %s); the floor is not reported",
                       type(err).__name__, err)
        return None
    finally:
        recorder.first_denoiser_call = None
    return runtime.all_gather_object(count)


def _measurement_sections(plan: RunPlan, env, records, whole, flop_counts, recorder,
                          timeline_block, idle_window, exclusivity, nvml_reads, window) -> dict:
    from mlenergy.diffusion import analysis, environment, flops, gpu_checks, stages
    from mlenergy.diffusion import timeline as timelines

    stage_records = [r.stages for r in records]
    breakdown = stages.stage_breakdown(stage_records)
    times = [r.measurement.time for r in records]
    energies = [r.measurement.total_gpu_energy for r in records]
    sections = {"stage_breakdown": breakdown, "stage_fence": recorder.fence_mode,
                "steps": stages.step_summary(stage_records)}
    sections.update(analysis.per_image_statistics(times, energies, plan.batch_size))
    sections["physical_floor"] = None
    if flop_counts:
        first = recorder.parts["denoising"][0]
        forwards = sum(r["denoiser_forwards"] for r in stage_records) / len(stage_records)
        analytic = flops.analytic_forward_flops(plan.spec.family.name, first, plan.height,
                                                plan.width, plan.max_sequence_length,
                                                plan.batch_size)
        sections["physical_floor"] = analysis.physical_floor(
            per_rank_counts=flop_counts, analytic=analytic, forwards_per_iteration=forwards,
            breakdown=breakdown, iteration_time_s=sum(times) / len(times),
            iteration_energy_j=None if None in energies else sum(energies) / len(energies),
            num_gpus=plan.num_gpus, gpu_model=environment.device_model(env), dtype=plan.dtype)
    sections["idle_baseline"] = (analysis.idle_baseline(timeline_block, *idle_window)
                                 if idle_window else None)
    before = _merge_dicts(r[0] for r in nvml_reads)
    after = _merge_dicts(r[1] for r in nvml_reads)
    sections["energy_cross_check"] = {
        "nvml": gpu_checks.nvml_cross_check(before, after, whole.gpu_energy),
        "timeline": gpu_checks.timeline_self_check(
            whole.gpu_energy,
            timelines.energy_between(timeline_block, *window) if timeline_block else None),
    }
    sections["gpu_exclusivity"] = exclusivity
    sections["host_energy"] = {
        "source": "RAPL through Zeus; never added into the GPU figures",
        "cpu_energy_j": _total(whole.cpu_energy), "dram_energy_j": _total(whole.dram_energy),
    }
    return sections


def _merge_dicts(parts) -> dict | None:
    merged: dict = {}
    for part in parts:
        if part:
            merged.update(part)
    return merged or None


def _total(energy: dict | None) -> float | None:
    return sum(energy.values()) if energy else None


def _prompts(plan: RunPlan, ranks):
    """Rank 0 reads the prompt pool; every rank gets the same schedule from it."""
    workload = plan.config.workload
    payload = None
    if ranks.is_main:
        if workload.prompts_file is not None:
            pool = prompt_source.PromptPool(prompt_source.read_prompts_file(workload.prompts_file),
                                            f"file:{workload.prompts_file}")
        else:
            pool = prompt_source.load_pool(workload.prompt_dataset, workload.prompt_cache_dir)
        payload = (pool.prompts, pool.source)
    pool_prompts, source = runtime.broadcast_object(payload)
    schedule = prompt_source.schedule(pool_prompts, plan.seed, plan.batch_size,
                                      plan.warmup_iters, plan.benchmark_iters)
    logger.info("Prompts: %d from %s%s", len(pool_prompts), source,
                " (fewer than the run needs: some repeat)" if schedule.wrapped else "")
    return schedule, source


def _save_images(plan: RunPlan, iteration: int, batch: list[str], images) -> list[str]:
    if images is None or not plan.config.save_images:
        return []
    out_dir = plan.run_dir / results.IMAGE_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for index, (prompt, image) in enumerate(zip(batch, images)):
        name = results.image_name(iteration, index, prompt)
        image.save(out_dir / name)
        names.append(f"{results.IMAGE_DIR}/{name}")
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
