"""The one reader of results.json (`RunResults.load`): real H100 results written before `task`,
`run_identity`, `ci95` and the self-check verdict existed read back with their legacy rules;
a missing, truncated, foreign or half-written file is refused or judged incomplete in one
line; and a self-check's verdict is the run's own."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from mlenergy.diffusion.output import rundir
from mlenergy.diffusion.probes import checks as gpu_checks
from mlenergy.diffusion.results import stats
from mlenergy.diffusion.results.results_reader import ResultsError, RunResults, run_dirs
from mlenergy.diffusion.results.results_sections import SelfCheck, Summary
from test_toolkit import FIXTURES

IMAGES = FIXTURES / "run" / "diffusion" / "text-to-image" / "black-forest-labs" / "FLUX.1-dev"
ULYSSES2_RING2 = IMAGES / ("batch-1+size-1024x1024+steps-28+seed-48105+uly-2+ring-2+tc-False"
                           "+weights-random")


def _video_run() -> Path:
    videos = FIXTURES / "run" / "diffusion" / "text-to-video"
    return next(videos.glob("*/*/*/results.json")).parent


def _written(tmp_path: Path, doc: dict, name: str = "run") -> Path:
    run_dir = tmp_path / name
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(doc))
    return run_dir


def _doc(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def test_an_h100_run_reads_as_attributes():
    stored = RunResults.load(ULYSSES2_RING2)
    doc = _doc(ULYSSES2_RING2)
    assert stored.run_dir == ULYSSES2_RING2 and stored.path.name == "results.json"
    assert (stored.model_id, stored.batch_size, stored.task, stored.unit) == (
        "black-forest-labs/FLUX.1-dev", 1, "text-to-image", "image")
    assert (stored.ulysses_degree, stored.ring_degree, stored.num_gpus) == (2, 2, 4)
    assert stored.energy_per_output == doc["energy_per_image"] > 0
    assert [w.time for w in stored.energy_windows] == [
        w["time"] for w in doc["iteration_energy_measurements"]]
    assert [it.outputs for it in stored.iterations] == [it["images"] for it in doc["iterations"]]
    assert [g.name for g in stored.gpus] == ["NVIDIA H100 80GB HBM3"] * 4
    assert stored.section("configurations") == stored.configurations == doc["configurations"]
    assert stored.section("no such block") == {}
    assert stored.incomplete_reason is None


def test_a_video_run_is_counted_in_videos():
    stored = RunResults.load(_video_run() / "results.json")  # the file itself, too
    assert (stored.task, stored.unit) == ("text-to-video", "video")
    assert stored.time_per_output == _doc(_video_run())["avg_time_per_video"]
    assert rundir.per_output(_video_run()) == {
        "unit": "video", "seconds": stored.time_per_output, "joules": stored.energy_per_output,
        "measured_s": stored.total_time}


def test_results_older_than_ci95_get_the_interval_from_their_stdev():
    stored = RunResults.load(ULYSSES2_RING2)
    energy = _doc(ULYSSES2_RING2)["energy_per_iteration"]
    assert "ci95" not in energy and stored.num_iterations == 3
    half = stats.t_quantile_975(2) * energy["stdev"] / math.sqrt(3)
    low, high = stored.energy_per_iteration.interval(stored.num_iterations)
    assert (low, high) == pytest.approx((energy["mean"] - half, energy["mean"] + half))
    # One sample has no interval; a recorded one is taken as it is.
    assert Summary(mean=1.0, stdev=0.0, n=1).interval() is None
    assert Summary(mean=1.0, stdev=9.0, n=5, ci95=[0.5, 1.5]).interval() == (0.5, 1.5)


def test_results_older_than_task_and_degrees_take_them_from_the_layout(tmp_path):
    doc = _doc(ULYSSES2_RING2)
    for key in ("task", "ulysses_degree", "ring_degree", "num_gpus", "num_processes"):
        del doc[key]
    layout = tmp_path / "run" / "diffusion" / "text-to-video" / "org" / "model"
    stored = RunResults.load(_written(layout, doc))
    assert stored.task == "text-to-video"  # the tree says so, whatever the keys
    assert (stored.ulysses_degree, stored.ring_degree) == (2, 2)  # from `configurations`
    assert (stored.num_gpus, stored.num_processes) == (4, 4)
    elsewhere = RunResults.load(_written(tmp_path / "flat", doc))
    assert elsewhere.task == "text-to-image"
    assert RunResults.load(_written(tmp_path / "frames", {**doc, "num_frames": 81})).task == \
        "text-to-video"


def test_results_older_than_run_identity_are_judged_by_the_settings_they_carry():
    recorded, whole = RunResults.load(ULYSSES2_RING2).identity
    assert not whole
    assert recorded == {"model_id": "black-forest-labs/FLUX.1-dev", "batch_size": 1,
                        "height": 1024, "width": 1024, "inference_steps": 28, "seed": 48105,
                        "benchmark_iters": 3, "ulysses_degree": 2, "ring_degree": 2,
                        "use_torch_compile": False, "warmup_iters": 1}
    assert rundir.inspect(ULYSSES2_RING2, recorded).state == "done"
    other = rundir.inspect(ULYSSES2_RING2, {**recorded, "seed": 1, "dtype": "bfloat16"})
    assert other.state == "other" and other.detail.endswith("was measured with seed 48105, not 1")


def test_a_missing_results_json_is_refused_in_one_line(tmp_path):
    with pytest.raises(ResultsError, match=r"^results\.json is missing$"):
        RunResults.load(tmp_path)
    assert rundir.per_output(tmp_path) is None and run_dirs(tmp_path) == []


@pytest.mark.parametrize("text, says", [
    ('{"model_id": "black-forest-labs/FLU', "not valid JSON"),  # cut off mid-write
    (b"\xff\xfe{}", "not valid JSON"),
    ("[1, 2]", "a JSON list, not an object"),
    ('{"accuracy": 0.9}', "no model_id or batch_size: not a results.json of this benchmark"),
    ('{"model_id": "m", "batch_size": true}', "batch_size True is not a positive integer"),
])
def test_a_damaged_or_foreign_file_is_refused_and_is_not_done(tmp_path, text, says):
    results = tmp_path / "results.json"
    results.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ResultsError) as refused:
        RunResults.load(tmp_path)
    assert says in str(refused.value) and "\n" not in str(refused.value)
    existing = rundir.inspect(tmp_path)
    assert existing.state == "incomplete" and says in existing.detail


def test_results_cut_short_of_their_iterations_are_incomplete(tmp_path):
    doc = _doc(ULYSSES2_RING2)
    short = _written(tmp_path, {**doc, "iterations": doc["iterations"][:2]}, "short")
    assert RunResults.load(short).incomplete_reason == "does not hold its measured iterations"
    assert rundir.inspect(short).state == "incomplete"
    untimed = _written(tmp_path, {**doc, "total_time": float("nan")}, "untimed")
    assert RunResults.load(untimed).incomplete_reason == "has no positive total_time"
    assert rundir.inspect(_written(tmp_path, doc, "whole")).state == "done"


def test_a_self_check_verdict_is_the_runs_own():
    # The run judged at its recorded tolerance: its verdict stands, whatever the difference.
    assert SelfCheck(relative_difference=0.02, within_tolerance=False, tolerance=0.01).passed \
        is False
    assert SelfCheck(relative_difference=0.05, within_tolerance=True, tolerance=0.10).passed
    # No verdict (the direct NVML read; older results): the recorded tolerance, else the run's.
    assert SelfCheck(relative_difference=0.02).passed
    assert SelfCheck(relative_difference=-0.04).passed is False
    assert SelfCheck(relative_difference=0.04, tolerance=0.05).passed
    assert SelfCheck().passed is None
    from mlenergy.diffusion.results import results_sections

    assert results_sections.SELF_CHECK_TOLERANCE == gpu_checks.SELF_CHECK_TOLERANCE


def test_the_checker_reads_the_self_check_verdict_the_run_wrote(tmp_path):
    """`check --measurement`'s self-check lines, on one H100 run given the blocks a run of
    today writes: the run's verdict decides, the checker has no tolerance of its own."""
    from mlenergy.diffusion.tools import check_runs as checks

    doc = _doc(ULYSSES2_RING2)
    doc.update(stage_breakdown={"denoising": {"time_s": 4.0, "energy_j": 2000.0}},
               latency_per_image_stats={"mean": 4.9, "ci95": None},
               idle_baseline={"total_power_w": 400.0, "duration_s": 3.0},
               timeline={"power": {"device_instant": {"0": [[0.0, 500.0]]}}})

    def problems(timeline_check: dict) -> list[str]:
        doc["energy_cross_check"] = {"timeline": timeline_check,
                                     "nvml": {"relative_difference": 0.001}}
        shutil.rmtree(tmp_path / "run", ignore_errors=True)
        return checks.measurement_report(RunResults.load(_written(tmp_path, doc)))[1]

    strict = problems({"relative_difference": 0.02, "within_tolerance": False,
                       "tolerance": 0.01})
    assert "timeline cross-check differs by +2.00%" in strict
    assert not [p for p in problems({"relative_difference": 0.02, "within_tolerance": True,
                                     "tolerance": 0.03}) if "cross-check" in p]
    # Results older than the verdict: judged at the run's tolerance.
    assert "timeline cross-check differs by -4.00%" in problems({"relative_difference": -0.04})
    assert not [p for p in problems({"relative_difference": 0.02}) if "cross-check" in p]
