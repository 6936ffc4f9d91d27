"""The energy path on scripted GPUs (probes/fake.py): the real EnergyMeter, RunGpus and checks,
in this process and in a whole run, with counters that cannot be trusted (0 J, NaN, a wrap)."""

from __future__ import annotations

import logging
import os
import time

import mlenergy.data.records.runs as runs_module
import pandas as pd
import pytest
import torch

from conftest import TINY_FLUX, read_events, scripted_run
from mlenergy.diffusion.probes import checks
from mlenergy.diffusion.probes.energy import EnergyMeter, Measurement
from mlenergy.diffusion.probes.fake import ScriptedAccess
from mlenergy.diffusion.probes.gpus import RunGpus
from mlenergy.diffusion.process.runtime import Ranks
from mlenergy.diffusion.tools import report

CPU = torch.device("cpu")


def node_gpus(script: dict, *, rank: int = 0, world_size: int = 1,
              local_world_size: int = 1) -> RunGpus:
    ranks = Ranks(rank=rank, world_size=world_size, local_rank=rank % local_world_size,
                  local_world_size=local_world_size, device=CPU)
    return RunGpus(ranks, ScriptedAccess(script, local_world_size, rank))


def measure(gpus: RunGpus, seconds: float) -> Measurement:
    meter = EnergyMeter(gpus)
    meter.begin("window")
    time.sleep(seconds)
    return meter.end("window")


def test_a_window_is_fenced_and_reads_power_times_time_per_gpu(tmp_path):
    events = tmp_path / "events.jsonl"
    gpus = node_gpus({"power_w": [300.0, 500.0], "events": str(events)}, world_size=2,
                     local_world_size=2)
    m = measure(gpus, 0.05)
    assert 0.05 <= m.time < 1.0
    assert m.gpu_energy == {"0": pytest.approx(300.0 * m.time, rel=1e-4),
                            "1": pytest.approx(500.0 * m.time, rel=1e-4)}
    assert m.total_gpu_energy == pytest.approx(800.0 * m.time, rel=1e-4)
    assert [(e["event"], e["name"]) for e in read_events(events)] == [
        ("sync", None), ("fenced", None), ("begin", "window"),
        ("sync", None), ("fenced", None), ("end", "window")]


def wrapping_soon(power_w: float, wrap_at_j: float, seconds: float) -> dict:
    """A counter that reaches wrap_at_j, and wraps to 0, `seconds` from now."""
    epoch = time.time() + seconds - wrap_at_j / power_w
    return {"power_w": power_w, "counter": "wrap", "wrap_at_j": wrap_at_j, "epoch": epoch}


@pytest.mark.parametrize("counter", ["zero", "nan", "wrap"])
def test_a_counter_without_a_usable_reading_gives_unmeasured_energy_never_0(counter, caplog):
    script = (wrapping_soon(300.0, 1e6, 0.5) if counter == "wrap"
              else {"power_w": 300.0, "counter": counter})
    gpus = node_gpus(script)
    with caplog.at_level(logging.WARNING, logger="mlenergy.diffusion"):
        m = measure(gpus, 0.8 if counter == "wrap" else 0.05)
    assert m.gpu_energy is None and m.total_gpu_energy is None
    assert m.time > 0
    assert "reported as unmeasured" in caplog.text


def test_a_counter_that_has_not_wrapped_yet_is_a_measurement():
    gpus = node_gpus(wrapping_soon(300.0, 1e6, 60.0))
    m = measure(gpus, 0.05)
    assert m.gpu_energy == {"0": pytest.approx(300.0 * m.time, rel=1e-4)}


def test_gpus_of_later_nodes_get_global_keys():
    # The second node of two with one GPU each, then the second of two with two GPUs each.
    assert node_gpus({}, rank=1, world_size=2).keyed({0: 1.0}) == {"1": 1.0}
    second = node_gpus({}, rank=2, world_size=4, local_world_size=2)
    assert [second.key(i) for i in second.local_indices] == ["2", "3"]
    assert second.total == 4
    energy, _ = second.access.read_counters()
    assert set(second.keyed(energy)) == {"2", "3"}


def test_merging_nodes_keeps_every_gpu_and_the_longest_time():
    node0 = Measurement(time=1.0, gpu_energy={"0": 300.0, "1": 310.0})
    node1 = Measurement(time=1.2, gpu_energy={"2": 600.0, "3": 610.0})
    merged = Measurement.merge_nodes([node0, node1])
    assert merged.time == 1.2
    assert merged.gpu_energy == {"0": 300.0, "1": 310.0, "2": 600.0, "3": 610.0}
    assert merged.total_gpu_energy == 1820.0
    unmeasured = Measurement(time=1.1, gpu_energy=None)
    assert Measurement.merge_nodes([node0, unmeasured]).gpu_energy is None
    assert Measurement.merge_nodes([unmeasured, node1]).gpu_energy is None


@pytest.mark.parametrize("timeline_j,within", [
    (1000.0, True), (1029.0, True), (971.0, True),
    (1100.0, False), (900.0, False), (1031.0, False), (969.0, False)])
def test_the_timeline_self_check_tolerance_holds_both_ways(timeline_j, within):
    check = checks.timeline_self_check({"0": 600.0, "1": 400.0}, {"0": timeline_j})
    assert check["within_tolerance"] is within
    assert check["relative_difference"] == pytest.approx(timeline_j / 1000.0 - 1.0)


def test_other_processes_on_a_scripted_gpu_are_reported():
    gpus = node_gpus({"foreign_pids": [4242]})
    found = checks.check_exclusive(gpus, own_pids={os.getpid()}, require=False)
    assert found["exclusive"] is False and found["foreign_pids"] == {"0": [4242]}
    with pytest.raises(checks.ForeignProcessesError, match="--require_exclusive_gpus"):
        checks.check_exclusive(gpus, own_pids={os.getpid()}, require=True)
    assert checks.check_exclusive(node_gpus({}), own_pids={os.getpid()},
                                  require=True)["exclusive"] is True


def test_a_run_whose_counter_never_moves_has_no_energy_anywhere(tmp_path):
    """End to end: the counter reads 0 J in every window. Energy is null, never 0, and the key
    readers take at face value is absent, so neither the toolkit nor the report publish a number.
    """
    run = scripted_run(tmp_path, [*TINY_FLUX, "--benchmark_iters", "2", "--warmup_iters", "1",
                                  "--no_save_images", "--idle_baseline_s", "0.2"],
                       {"power_w": 300.0, "counter": "zero", "foreign_pids": [4242]})
    doc = run.doc
    assert doc["num_gpus"] == 1 and doc["energy_measured"] is False
    assert "iteration_energy_measurements" not in doc
    assert list(doc)[14:17] == ["energy_measurement", "configurations", "timeline"]
    for key in ("total_energy", "energy_per_image", "average_power_watts", "energy_per_iteration",
                "energy_per_image_stats"):
        assert doc[key] is None, key
    assert doc["energy_measurement"]["gpu_energy"] is None
    assert all(it["energy"] is None and it["gpu_energy"] is None for it in doc["iterations"])
    assert doc["stage_breakdown"]["remainder"]["energy_j"] is None
    assert doc["total_time"] > 0 and doc["avg_time_per_image"] > 0
    assert doc["energy_cross_check"]["timeline"] is None
    assert doc["gpu_exclusivity"]["exclusive"] is False
    assert doc["gpu_exclusivity"]["foreign_pids"] == {"0": [4242]}
    log = (run.run_dir / "driver_log.txt").read_text()
    assert "reported as unmeasured" in log and "energy not measured" in log

    df = runs_module.DiffusionRuns.from_raw_results(run.root,
                                                    config_dir=run.config_dir).to_dataframe()
    assert len(df) == 0
    row = report.load_table(run.root).iloc[0]
    assert not row["energy_measured"] and pd.isna(row["energy_per_output_j"])
    assert row["time_per_output_s"] == pytest.approx(doc["avg_time_per_image"], rel=1e-9)
