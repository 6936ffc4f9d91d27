"""The energy of waiting: interval arithmetic on a step's kernel timeline, and the step windows
read from a real profiler trace."""

from __future__ import annotations

import pytest
import torch

from mlenergy.diffusion.profiling import step_profile, waiting

# One 10 s step: compute 0-4 and 5-8, a collective 3-6 (hidden 3-4 and 5-6, exposed 4-5),
# nothing 8-10.
KERNELS = [(0.0, 4.0, False), (5.0, 8.0, False), (3.0, 6.0, True)]
WINDOW = (0.0, 10.0)


def test_merge_and_subtract_spans():
    assert waiting.merge([(3, 4), (0, 2), (1, 3), (6, 6)]) == [(0, 4)]
    assert waiting.subtract([(0, 10)], [(1, 2), (4, 6), (9, 12)]) == [(0, 1), (2, 4), (6, 9)]
    assert waiting.subtract([(0, 2), (5, 7)], [(1, 6)]) == [(0, 1), (6, 7)]
    assert waiting.clip([(-1, 2), (3, 12), (20, 30)], (0, 10)) == [(0, 2), (3, 10)]


def test_a_step_splits_into_compute_exposed_communication_and_idle():
    step = waiting.step_activity(KERNELS, WINDOW)
    assert step == {"wall_s": 10.0, "busy_s": 8.0, "compute_s": 7.0, "communication_s": 3.0,
                    "exposed_communication_s": 1.0, "idle_s": 2.0, "collective_kernels": 1}
    # Compute, exposed communication and idle partition the wall time.
    assert step["compute_s"] + step["exposed_communication_s"] + step["idle_s"] == step["wall_s"]


def test_kernels_outside_the_window_do_not_count():
    step = waiting.step_activity([*KERNELS, (11.0, 12.0, True), (-3.0, -1.0, False)], WINDOW)
    assert step["collective_kernels"] == 1 and step["busy_s"] == 8.0


def test_summary_shares_over_steps():
    steps = [waiting.step_activity(KERNELS, WINDOW),
             waiting.step_activity([(10.0, 20.0, False)], (10.0, 20.0))]
    summary = waiting.activity_summary(steps)
    assert summary["steps"] == 2 and summary["per_step"]["wall_s"] == 10.0
    assert summary["communication_share"] == pytest.approx(0.15)
    assert summary["exposed_communication_share"] == pytest.approx(0.05)
    assert summary["idle_share"] == pytest.approx(0.10)
    assert summary["waiting_share"] == pytest.approx(0.15)
    with pytest.raises(ValueError):
        waiting.activity_summary([])


def test_power_samples_are_grouped_by_what_the_gpu_does():
    samples = [(1.0, 700.0), (3.5, 690.0), (4.5, 300.0), (9.0, 100.0), (9.5, 120.0),
               (15.0, 999.0)]  # the last one is outside every step
    power = waiting.power_by_activity(samples, KERNELS, [WINDOW])
    assert power["compute"] == {"samples": 2, "mean_w": 695.0}
    assert power["exposed_communication"] == {"samples": 1, "mean_w": 300.0}
    assert power["idle"] == {"samples": 2, "mean_w": 110.0}


def test_energy_of_waiting_with_and_without_power_by_activity():
    summary = waiting.activity_summary([waiting.step_activity(KERNELS, WINDOW)])
    uniform = waiting.waiting_energy(summary, 1000.0)
    assert uniform["waiting_energy_j"] == pytest.approx(300.0)  # 3 s of 10 waiting
    power = {"compute": {"samples": 9, "mean_w": 700.0},
             "exposed_communication": {"samples": 3, "mean_w": 300.0},
             "idle": {"samples": 4, "mean_w": 100.0}}
    weighted = waiting.waiting_energy(summary, 1000.0, power)
    # 1 s x 300 W + 2 s x 100 W against 7 s x 700 W + those 500 J.
    assert weighted["waiting_energy_j"] == pytest.approx(1000.0 * 500 / 5400)
    assert waiting.waiting_energy(summary, None)["waiting_energy_j"] is None


def test_step_windows_come_from_the_profilers_step_marks():
    from torch.profiler import ProfilerActivity, profile, record_function

    x = torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            with record_function(step_profile.STEP_MARK):
                x @ x
        x @ x
    kernels, windows = step_profile.spans_of(prof.profiler.kineto_results.events())
    assert kernels == []  # CPU only: no GPU work in this trace
    assert len(windows) == 3 and all(a < b for a, b in windows)
    assert windows == sorted(windows) and windows[0][1] <= windows[1][0]
