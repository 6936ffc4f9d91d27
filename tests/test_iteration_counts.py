"""The documented default iteration counts (README: `--benchmark_iters`): images 8 measured
iterations up to 30 steps and 4 beyond, videos 2; one warm-up iteration, two when compiling."""

from __future__ import annotations

import shlex

import pytest

from mlenergy.diffusion.inputs.config import parse_cli
from mlenergy.diffusion.planning.plan import make_plan
from mlenergy.diffusion.process.launch import Launch

ONE_GPU = Launch(device_type="cuda", visible_gpus=1)


def plan_for(argv: str):
    return make_plan(parse_cli(shlex.split(argv + " --workload.weights random")), ONE_GPU)


@pytest.mark.parametrize("steps,measured", [(1, 8), (29, 8), (30, 8), (31, 4), (50, 4)])
def test_images_measure_8_iterations_up_to_30_steps_and_4_beyond(steps, measured):
    plan = plan_for(f"workload:t2i --workload.inference_steps {steps}")
    assert (plan.inference_steps, plan.benchmark_iters) == (steps, measured)
    assert (plan.warmup_iters, plan.warmup_steps) == (1, steps)


def test_the_model_default_steps_decide_when_none_are_given():
    # FLUX.1-dev defaults to 28 steps (<= 30): 8 iterations.
    plan = plan_for("workload:t2i")
    assert (plan.inference_steps, plan.benchmark_iters) == (28, 8)


@pytest.mark.parametrize("steps", [30, 31])
def test_videos_measure_2_iterations_whatever_the_steps(steps):
    plan = plan_for(f"workload:t2v --workload.inference_steps {steps}")
    assert (plan.benchmark_iters, plan.warmup_iters, plan.warmup_steps) == (2, 1, 1)


def test_explicit_counts_and_compilation_override_the_defaults():
    plan = plan_for("--benchmark_iters 3 workload:t2i --workload.inference_steps 31")
    assert plan.benchmark_iters == 3
    assert plan_for("--use_torch_compile workload:t2i").warmup_iters == 2
