"""Measured results as today's code writes them: tiny FLUX runs on scripted GPUs (constant power
per GPU, probes/fake.py), in one process and in two under Ulysses 2 over gloo, batch 2.

Every derived number is checked against the script (energy = power x window time), the
ML.ENERGY key order is checked, and `mlenergy-data` and the report must read the same numbers
back. The scripted GPUs log every fence and window, and the recording hook (testing.py) every
pipeline call and saved image, in one event log: the order of a run's events is checked from it.
"""

from __future__ import annotations

from datetime import datetime

import mlenergy.data.records.runs as runs_module
import pytest

from conftest import TINY_FLUX, ScriptedRun, scripted_run
from mlenergy.diffusion.tools import report

ML_ENERGY_KEYS = [
    "date", "model_id", "batch_size", "num_iterations", "height", "width", "inference_steps",
    "seed", "total_images", "total_time", "throughput_images_per_sec", "avg_time_per_image",
    "total_energy", "energy_per_image", "energy_measurement", "iteration_energy_measurements",
    "configurations", "timeline"]
ZEUS_MEASUREMENT_KEYS = ["time", "gpu_energy", "cpu_energy", "dram_energy", "soc_energy"]
SEED = 48105
STAGES = ("text_encoding", "denoising", "decoding")

# One process, one scripted GPU at 300 W whose timeline agrees with its counter. Three measured
# iterations of batch 2, so that per image, per iteration and per run all differ.
ONE_PROCESS_SCRIPT = {"power_w": 300.0}
ONE_PROCESS_ITERS = 3
ONE_PROCESS_WARMUP = 2


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory) -> ScriptedRun:
    tmp = tmp_path_factory.mktemp("one-process-scripted")
    return scripted_run(tmp, [*TINY_FLUX, "--benchmark_iters", str(ONE_PROCESS_ITERS),
                              "--warmup_iters", str(ONE_PROCESS_WARMUP),
                              "--idle_baseline_s", "0.5"], ONE_PROCESS_SCRIPT)


@pytest.fixture(params=["one process", "two processes, ulysses 2"])
def run(request) -> ScriptedRun:
    if request.param == "one process":
        return request.getfixturevalue("one_process_run")
    return request.getfixturevalue("ulysses2_scripted_run")


def powers(run: ScriptedRun) -> dict[str, float]:
    power = run.script["power_w"]
    per_gpu = power if isinstance(power, list) else [power]
    return {str(i): float(w) for i, w in enumerate(per_gpu)}


def approx(value, rel=1e-4):
    # The scripted counters are about 5e11 J: a window's joules are exact to ~1e-4 J.
    return pytest.approx(value, rel=rel, abs=1e-3)


# -- the numbers -----------------------------------------------------------------------------

def test_every_window_reads_each_gpus_power_times_the_window_time(run):
    doc, watts = run.doc, powers(run)
    assert doc["energy_measured"] is True and doc["num_gpus"] == len(watts)
    windows = [doc["energy_measurement"], *doc["iteration_energy_measurements"]]
    assert len(windows) == 1 + doc["num_iterations"]
    for window in windows:
        assert list(window["gpu_energy"]) == list(watts)
        for gpu, joules in window["gpu_energy"].items():
            assert joules == approx(watts[gpu] * window["time"])
    # The measured phase holds every iteration.
    assert doc["energy_measurement"]["time"] > sum(
        m["time"] for m in doc["iteration_energy_measurements"])
    for it, window in zip(doc["iterations"], doc["iteration_energy_measurements"]):
        assert it["time"] == window["time"] and it["gpu_energy"] == window["gpu_energy"]
        assert it["energy"] == pytest.approx(sum(window["gpu_energy"].values()), rel=1e-12)


def test_headline_numbers_per_image_per_iteration_and_per_run(run):
    doc, watts = run.doc, powers(run)
    batch, iters = doc["batch_size"], doc["num_iterations"]
    assert batch == 2 and iters == len(doc["iterations"]) >= 2
    times = [it["time"] for it in doc["iterations"]]
    energies = [it["energy"] for it in doc["iterations"]]
    images = batch * iters
    assert doc["total_images"] == images
    assert doc["total_time"] == pytest.approx(sum(times), rel=1e-12)
    assert doc["total_energy"] == pytest.approx(sum(energies), rel=1e-12)
    assert doc["avg_time_per_image"] == pytest.approx(sum(times) / images, rel=1e-12)
    assert doc["throughput_images_per_sec"] == pytest.approx(images / sum(times), rel=1e-12)
    assert doc["energy_per_image"] == pytest.approx(sum(energies) / images, rel=1e-12)
    assert doc["average_power_watts"] == pytest.approx(sum(energies) / sum(times), rel=1e-12)
    # Constant power: the run drew the scripted watts, and each image cost them x its time.
    assert doc["average_power_watts"] == approx(sum(watts.values()))
    assert doc["energy_per_image"] == approx(sum(watts.values()) * doc["avg_time_per_image"])

    assert doc["latency_per_iteration"]["n"] == iters
    assert doc["latency_per_iteration"]["mean"] == pytest.approx(sum(times) / iters, rel=1e-12)
    assert doc["energy_per_iteration"]["mean"] == pytest.approx(sum(energies) / iters, rel=1e-12)
    assert doc["latency_per_image_stats"]["mean"] == pytest.approx(doc["avg_time_per_image"],
                                                                   rel=1e-12)
    assert doc["energy_per_image_stats"]["mean"] == pytest.approx(doc["energy_per_image"],
                                                                  rel=1e-12)
    assert doc["energy_per_image_stats"]["min"] == pytest.approx(min(energies) / batch, rel=1e-12)


def test_stage_energies_add_up_to_the_iteration(run):
    doc, total_watts = run.doc, sum(powers(run).values())
    for it in doc["iterations"]:
        stages = it["stages"]
        for name in STAGES:
            stage = stages[name]
            assert stage["energy_method"] == "counter"
            assert list(stage["gpu_energy_j"]) == list(powers(run))
            # Counters are read right after the boundary's wall time (microseconds, unless the
            # process is preempted in between).
            assert stage["energy_j"] == pytest.approx(total_watts * stage["time_s"],
                                                      abs=total_watts * 0.01)
        parts = sum(stages[name]["energy_j"] for name in STAGES)
        assert stages["remainder"]["energy_j"] == pytest.approx(it["energy"] - parts, rel=1e-9)
    for name in (*STAGES, "remainder"):
        mean = sum(it["stages"][name]["energy_j"] for it in doc["iterations"]) / len(
            doc["iterations"])
        assert doc["stage_breakdown"][name]["energy_j"] == pytest.approx(mean, rel=1e-9)


def test_idle_baseline_nvml_check_and_timeline_self_check(run):
    doc, watts = run.doc, powers(run)
    scale = run.script.get("timeline_scale", 1.0)
    idle = doc["idle_baseline"]
    assert 0.5 <= idle["duration_s"] < 1.5
    assert idle["mean_power_w"] == {g: pytest.approx(w * scale) for g, w in watts.items()}
    assert idle["total_power_w"] == pytest.approx(sum(watts.values()) * scale)
    nvml = doc["energy_cross_check"]["nvml"]
    assert list(nvml["nvml_gpu_energy_j"]) == list(watts)
    phase_energy = sum(doc["energy_measurement"]["gpu_energy"].values())
    assert nvml["zeus_energy_j"] == pytest.approx(phase_energy, rel=1e-12)
    # NVML is read just after each end of the measured phase: on a busy CPU, a little later.
    assert abs(nvml["relative_difference"]) < 0.25
    check = doc["energy_cross_check"]["timeline"]
    assert check["counter_energy_j"] == pytest.approx(phase_energy, rel=1e-12)
    assert check["relative_difference"] == pytest.approx(scale - 1.0, abs=0.02)
    assert check["within_tolerance"] is (abs(scale - 1.0) <= check["tolerance"])
    assert set(doc["timeline"]["power"]["device_instant"]) == set(watts)
    assert set(doc["timeline"]["temperature"]) == set(watts)


def test_the_timeline_self_check_fails_when_the_timeline_reads_low(ulysses2_scripted_run):
    # The two-node test has it reading high: the tolerance must hold in both directions.
    check = ulysses2_scripted_run.doc["energy_cross_check"]["timeline"]
    assert check["relative_difference"] == pytest.approx(-0.10, abs=0.02)
    assert check["within_tolerance"] is False


# -- the format and its readers ---------------------------------------------------------------

def test_results_keys_follow_the_ml_energy_order(run):
    doc = run.doc
    assert list(doc)[:len(ML_ENERGY_KEYS)] == ML_ENERGY_KEYS
    datetime.strptime(doc["date"], "%Y%m%d-%H%M%S")
    for window in [doc["energy_measurement"], *doc["iteration_energy_measurements"]]:
        assert list(window) == ZEUS_MEASUREMENT_KEYS
    assert list(doc["configurations"])[:3] == ["ulysses_degree", "ring_degree",
                                               "use_torch_compile"]
    assert list(doc["timeline"]) == ["benchmark_start_time", "benchmark_end_time", "power",
                                     "temperature"]
    assert (doc["configurations"]["ulysses_degree"], doc["num_processes"]) == (run.nproc,
                                                                               run.nproc)


def test_the_ml_energy_toolkit_reads_the_same_numbers(run):
    doc = run.doc
    df = runs_module.DiffusionRuns.from_raw_results(run.root,
                                                    config_dir=run.config_dir).to_dataframe()
    assert len(df) == 1
    row = df.iloc[0]
    assert (row["num_gpus"], row["batch_size"], row["ulysses_degree"]) == (
        doc["num_gpus"], doc["batch_size"], run.nproc)
    assert row["energy_per_generation_joules"] == pytest.approx(doc["energy_per_image"],
                                                                rel=1e-9)
    assert row["batch_latency_s"] == pytest.approx(doc["latency_per_iteration"]["mean"], rel=1e-9)
    assert row["avg_power_watts"] == pytest.approx(doc["average_power_watts"], rel=1e-9)
    assert row["throughput_generations_per_sec"] == pytest.approx(
        doc["throughput_images_per_sec"], rel=1e-9)


def test_the_report_reads_the_same_numbers(run):
    doc = run.doc
    table = report.load_table(run.root)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["energy_measured"] and row["num_gpus"] == doc["num_gpus"]
    assert row["time_per_output_s"] == pytest.approx(doc["avg_time_per_image"], rel=1e-9)
    assert row["energy_per_output_j"] == pytest.approx(doc["energy_per_image"], rel=1e-9)
    assert row["batch_latency_s"] == pytest.approx(doc["latency_per_iteration"]["mean"], rel=1e-9)
    assert row["throughput_per_s"] == pytest.approx(doc["throughput_images_per_sec"], rel=1e-9)
    assert row["avg_power_w"] == pytest.approx(doc["average_power_watts"], rel=1e-9)


# -- the order of events ----------------------------------------------------------------------

class EventLog:
    """The event log of a run, cut at fences: `segments[r][k]` is what rank r did after its k-th
    fence (k = 0: before the first). A fence is a device sync then a barrier, logged as "sync"
    (once the device drained) and "fenced" (past the barrier)."""

    def __init__(self, events: list[dict], nproc: int):
        self.segments: list[list[list[dict]]] = []
        self.sync_times: list[list[float]] = []
        for rank in range(nproc):
            mine = [e for e in events if e["rank"] == rank]
            segments, syncs = [[]], []
            for i, event in enumerate(mine):
                if event["event"] == "sync":
                    assert mine[i + 1]["event"] == "fenced", mine[i:i + 3]
                    syncs.append(event["time"])
                elif event["event"] == "fenced":
                    segments.append([])
                else:
                    segments[-1].append(event)
            self.segments.append(segments)
            self.sync_times.append(syncs)
        # Windows open and close on local rank 0, each right after a fence of its own.
        self.window_fence: dict[tuple[str, str], int] = {}
        for k, segment in enumerate(self.segments[0]):
            markers = [e for e in segment if e["event"] in ("begin", "end")]
            if markers:
                assert len(markers) == 1 and segment[0] is markers[0], segment
                self.window_fence[(markers[0]["event"], markers[0]["name"])] = k

    def without_markers(self, rank: int, k: int) -> list[dict]:
        return [e for e in self.segments[rank][k] if e["event"] not in ("begin", "end")]


def test_windows_open_and_close_behind_a_fence_on_every_rank(run):
    log = EventLog(run.events, run.nproc)
    iters = run.doc["num_iterations"]
    names = ["benchmark", *(f"iteration-{i}" for i in range(iters))]
    assert set(log.window_fence) == {(kind, n) for kind in ("begin", "end") for n in names}
    # Every rank went through the same fences.
    assert len({len(s) for s in log.segments}) == 1
    for (kind, name), k in log.window_fence.items():
        opened_or_closed = log.segments[0][k][0]["time"]
        for rank in range(run.nproc):
            # The barrier: no window moves before every rank's device has drained.
            assert log.sync_times[rank][k - 1] <= opened_or_closed, (kind, name, rank)


def test_warm_up_runs_unmeasured_and_each_window_holds_exactly_its_generation(run):
    doc, log = run.doc, EventLog(run.events, run.nproc)
    batch, iters = doc["batch_size"], doc["num_iterations"]
    steps, warmup = doc["inference_steps"], doc["configurations"]["warmup_iters"]
    assert warmup == len(doc["warmup_iteration_times"]) >= 1
    phase_opens = log.window_fence[("begin", "benchmark")]
    phase_closes = log.window_fence[("end", "benchmark")]
    for rank in range(run.nproc):
        before = [e for seg in log.segments[rank][:phase_opens] for e in seg]
        # Warm-up: full calls at the measured shapes, before any window, with seeds of their own.
        assert [e["event"] for e in before] == ["call", "return"] * warmup
        calls = [e for e in before if e["event"] == "call"]
        assert all(c["steps"] == steps and c["prompts"] == batch for c in calls)
        assert not {c["seed"] for c in calls} & {SEED + i for i in range(iters)}
        assert log.without_markers(rank, phase_opens) == []
        for i in range(iters):
            opens = log.window_fence[("begin", f"iteration-{i}")]
            closes = log.window_fence[("end", f"iteration-{i}")]
            assert closes == opens + 1
            inside = log.without_markers(rank, opens)
            # One call, with the documented seed (seed + i), and nothing else.
            assert [e["event"] for e in inside] == ["call", "return"], inside
            assert (inside[0]["seed"], inside[0]["steps"], inside[0]["prompts"]) == (
                SEED + i, steps, batch)
            between = log.without_markers(rank, closes)
            assert all(e["event"] == "save" for e in between), between
        assert log.window_fence[("begin", "iteration-0")] == phase_opens + 1
        assert log.window_fence[("end", f"iteration-{iters - 1}")] + 1 == phase_closes
        assert [e for seg in log.segments[rank][phase_closes:] for e in seg
                if e["event"] != "end"] == []


def test_outputs_are_saved_between_the_windows_by_one_rank(run):
    doc, log = run.doc, EventLog(run.events, run.nproc)
    # xDiT returns the images on the last rank.
    saver = run.nproc - 1
    for i, it in enumerate(doc["iterations"]):
        closes = log.window_fence[("end", f"iteration-{i}")]
        for rank in range(run.nproc):
            saved = [e["name"] for e in log.without_markers(rank, closes)]
            expected = [name.split("/")[-1] for name in it["images"]] if rank == saver else []
            assert saved == expected
        assert len(it["images"]) == doc["batch_size"]
        assert all(name.startswith(f"image_outputs/i{i}-") for name in it["images"])
