"""Timelines, the power plot and the GPU checks, on synthetic data (no GPU here)."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import pytest

from conftest import REPO
from mlenergy.diffusion.output import power_plot
from mlenergy.diffusion.probes import checks as gpu_checks, timeline


def synthetic_block(start=1000.0, seconds=12.0, gpus=("0", "1")):
    """Idle at 80 W for 2 s, then iterations of 4 s: 300 W text encoding 0.5 s, 700 W
    denoising 3 s, 400 W decoding 0.5 s."""
    def watts(t):
        rel = t - start - 2.0
        if rel < 0 or rel >= 8.0:
            return 80.0
        phase = rel % 4.0
        return 300.0 if phase < 0.5 else 700.0 if phase < 3.5 else 400.0

    samples = [start + i / 10 for i in range(int(seconds * 10) + 1)]
    power = {"device_instant": {g: [[t, watts(t)] for t in samples] for g in gpus},
             "device_average": {g: [[t, 500.0] for t in samples] for g in gpus}}
    temperature = {g: [[start + i / 2, 40 + i] for i in range(int(seconds * 2))] for g in gpus}
    iterations = [(start + 2.0, start + 6.0), (start + 6.0, start + 10.0)]
    stages = []
    for s, _ in iterations:
        stages += [("text_encoding", s, s + 0.5), ("denoising", s + 0.5, s + 3.5),
                   ("decoding", s + 3.5, s + 4.0)]
    return {"power": power, "temperature": temperature}, iterations, stages


def test_merge_blocks_gives_the_ml_energy_shape():
    node0, _, _ = synthetic_block(gpus=("0",))
    node1, _, _ = synthetic_block(gpus=("1",))
    merged = timeline.merge_blocks([node0, None, node1], 1002.0, 1010.0)
    assert set(merged) == {"benchmark_start_time", "benchmark_end_time", "power", "temperature"}
    assert set(merged["power"]) == {"device_instant", "device_average"}
    assert set(merged["power"]["device_instant"]) == {"0", "1"}
    assert merged["temperature"]["1"][0] == [1000.0, 40]
    assert timeline.merge_blocks([None, None], 0.0, 1.0) is None


def test_the_timeline_section_writes_the_ml_energy_block_or_only_its_bounds():
    node0, _, _ = synthetic_block(gpus=("0",))
    merged = timeline.merge_blocks([node0], 1002.0, 1010.0)
    sampled = timeline.PowerTimeline(**merged)
    assert sampled.sampled and sampled.to_results() == merged
    assert list(sampled.to_results()) == list(merged)
    cpu = timeline.PowerTimeline(1002.0, 1010.0)
    assert not cpu.sampled
    assert cpu.to_results() == {"benchmark_start_time": 1002.0, "benchmark_end_time": 1010.0}


def test_energy_and_mean_power_from_the_preferred_domain():
    block, iterations, _ = synthetic_block()
    idle = timeline.mean_power(block, 1000.0, 1001.9)
    assert idle == {"0": pytest.approx(80.0), "1": pytest.approx(80.0)}
    # One iteration: 0.5 s x 300 + 3 s x 700 + 0.5 s x 400 = 2450 J, within the edges' sampling.
    energy = timeline.energy_between(block, *iterations[0])
    assert energy["0"] == pytest.approx(2450.0, rel=0.03)
    only_average = {"power": {"device_average": block["power"]["device_average"]}}
    assert timeline.energy_between(only_average, 1001.0, 1003.0)["1"] == pytest.approx(1000.0)


def test_power_plot_on_synthetic_data(tmp_path):
    block, iterations, stages = synthetic_block()
    path = power_plot.plot_power(block, iterations, stages, tmp_path / "power.png",
                                 title="synthetic")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    with pytest.raises(ValueError):
        power_plot.plot_power({"power": {}}, iterations, stages, tmp_path / "none.png")


def test_plot_script_redraws_from_results_json(tmp_path):
    block, iterations, stages = synthetic_block()
    doc = {"model_id": "m", "batch_size": 1, "gpu_model": "g", "timeline": dict(block, benchmark_start_time=1002.0,
                                                                benchmark_end_time=1010.0),
           "iterations": [{"start_time": a, "end_time": b,
                           "stage_boundaries": [list(s) for s in stages if a <= s[1] < b]}
                          for a, b in iterations]}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    proc = subprocess.run([sys.executable, "scripts/plot_timeline.py", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "power_timeline.png").read_bytes()[:4] == b"\x89PNG"
    doc["timeline"] = {"benchmark_start_time": 1.0, "benchmark_end_time": 2.0}
    (tmp_path / "results.json").write_text(json.dumps(doc))
    proc = subprocess.run([sys.executable, "scripts/plot_timeline.py", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "no power timeline" in proc.stderr


def test_the_cross_check_section_holds_the_runs_own_verdicts():
    check = gpu_checks.EnergyCrossCheck.of(({"0": 1000.0}, {"0": 2010.0}), {"0": 1000.0},
                                           {"0": 1100.0})
    assert check.nvml.nvml_energy_j == 1010.0 and check.nvml.relative_difference == \
        pytest.approx(0.01)
    assert check.timeline.within_tolerance is False  # 10% apart, beyond the 3% tolerance
    written = check.to_results()
    assert list(written) == ["nvml", "timeline"]
    assert list(written["timeline"]) == ["counter_energy_j", "timeline_energy_j",
                                         "timeline_gpu_energy_j", "relative_difference",
                                         "within_tolerance", "tolerance"]
    assert gpu_checks.EnergyCrossCheck.of((None, None), None, None).to_results() == \
        {"nvml": None, "timeline": None}
    with pytest.raises(TypeError):  # a key the section does not know is not silently dropped
        gpu_checks.NvmlCrossCheck.from_results({"nvml_energy_j": 1.0, "extra": 2})


def test_foreign_processes_by_pid_and_by_count():
    ours = {100, 101}
    same_namespace = gpu_checks.foreign_processes({"0": [100], "1": [101, 555]}, ours)
    assert same_namespace["exclusive"] is False and same_namespace["foreign_pids"] == {"1": [555]}
    assert gpu_checks.foreign_processes({"0": [100], "1": [101]}, ours)["exclusive"] is True
    # In a container NVML reports host PIDs: none match, so count contexts instead.
    host_pids = gpu_checks.foreign_processes({"0": [7001], "1": [7002, 9999]}, ours)
    assert host_pids["pid_namespace_matches"] is False
    assert host_pids["foreign_pids"] == {"1": [9999]}
    assert gpu_checks.foreign_processes({"0": [], "1": []}, ours)["exclusive"] is True


def test_cross_checks(caplog):
    check = gpu_checks.nvml_cross_check({"0": 1000.0, "1": 2000.0}, {"0": 1500.0, "1": 2600.0},
                                        {"0": 505.0, "1": 600.0})
    assert check["nvml_gpu_energy_j"] == {"0": 500.0, "1": 600.0}
    assert check["nvml_energy_j"] == 1100.0 and check["zeus_energy_j"] == 1105.0
    assert check["relative_difference"] == pytest.approx(-5 / 1105)
    assert gpu_checks.nvml_cross_check(None, {"0": 1.0}, {"0": 1.0}) is None
    with caplog.at_level(logging.WARNING, logger="mlenergy.diffusion"):
        close = gpu_checks.timeline_self_check({"0": 1000.0}, {"0": 1020.0})
    assert close["within_tolerance"] is True and "Self-check" not in caplog.text
    with caplog.at_level(logging.WARNING, logger="mlenergy.diffusion"):
        far = gpu_checks.timeline_self_check({"0": 1000.0}, {"0": 1040.0})
    assert far["within_tolerance"] is False and far["relative_difference"] == pytest.approx(0.04)
    assert "Self-check" in caplog.text
    assert gpu_checks.timeline_self_check(None, {"0": 1.0}) is None


class _FakePower:
    def get_all_power_timelines(self, start_time, end_time):
        series = [(t, 100.0 + t) for t in (0.5, 0.8, 1.1, 1.2, 5.0)]
        return {"device_instant": {0: [s for s in series if (start_time is None
                                                             or start_time <= s[0])
                                        and s[0] <= end_time]}}

    def stop(self):
        self.stopped = True


class _FakeTemperature:
    def get_temperature_timeline(self, start_time, end_time):
        return {0: [(1.0, 41), (1.5, 42)]}

    def stop(self):
        pass


def test_monitor_block_keys_gpus_globally_and_filters_by_time():
    """Zeus's monitors (stand-ins with Zeus's method names) on the fifth node's GPU: key 8."""
    import torch

    from mlenergy.diffusion.probes.gpus import RunGpus, _ZeusTimelines
    from mlenergy.diffusion.process.runtime import Ranks

    class _Access:
        def timeline_monitors(self):
            return _ZeusTimelines(power, _FakeTemperature())

    power = _FakePower()
    ranks = Ranks(rank=8, world_size=10, local_rank=0, local_world_size=2,
                  device=torch.device("cpu"))
    monitor = timeline.TimelineMonitor(RunGpus(ranks, _Access()))
    # Samples come when the value changes and hold until the next: the one before the start
    # (0.8) gives the power at the start, so it is kept; earlier ones and later ones are not.
    block = monitor.block(1.0, 2.0)
    assert block == {"power": {"device_instant": {"8": [[0.8, 100.8], [1.1, 101.1],
                                                        [1.2, 101.2]]}},
                     "temperature": {"8": [[1.0, 41], [1.5, 42]]}}
    assert monitor.block(None, 2.0)["power"]["device_instant"]["8"][0] == [0.5, 100.5]
    assert monitor.active
    monitor.stop()
    assert power.stopped


def test_zeus_polling_processes_start_without_importing_the_benchmark(tmp_path):
    """Zeus's monitors poll in `spawn`ed processes; they must not import the parent's main module
    (the benchmark, torch and all: seconds of every launch before its idle baseline)."""
    script = tmp_path / "main.py"
    script.write_text(
        "import multiprocessing as mp, os, sys\n"
        "if __name__ == '__mp_main__':\n"
        "    print('child imported the main module', flush=True)\n"
        "from mlenergy.diffusion.probes.gpus import _spawned_pollers_bound_to_this_rank\n"
        "if __name__ == '__main__':\n"
        "    ctx = mp.get_context('spawn')\n"
        "    for hidden in (False, True):\n"
        "        print('hidden' if hidden else 'shown', flush=True)\n"
        "        with (_spawned_pollers_bound_to_this_rank() if hidden else open(os.devnull)):\n"
        "            child = ctx.Process(target=os.getpid)\n"
        "            child.start()\n"
        "        child.join()\n"
        "        assert child.exitcode == 0\n"
        "    assert __spec__ is None and __file__.endswith('main.py')\n")
    import subprocess
    import sys

    from conftest import REPO

    out = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr[-2000:]
    shown, hidden = out.stdout.split("hidden")
    assert "child imported the main module" in shown
    assert "child imported the main module" not in hidden
