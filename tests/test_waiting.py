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



def test_a_profiles_shares_carry_into_the_measured_denoising_stage():
    summary = waiting.activity_summary([waiting.step_activity(KERNELS, WINDOW)])
    power = {"compute": {"samples": 9, "mean_w": 700.0},
             "exposed_communication": {"samples": 3, "mean_w": 300.0},
             "idle": {"samples": 4, "mean_w": 100.0}}
    profile = {**summary, "energy_per_step_j": 5400.0,
               **waiting.waiting_energy(summary, 5400.0, power)}
    # 28 measured steps of 8 s (the profiled 10 s step was stretched 1.25x), 100 kJ on this GPU.
    inside = waiting.in_measured_windows(profile, 224.0, 100_000.0, 8.0)
    assert inside["waiting_s"] == pytest.approx(224.0 * 0.3)
    assert inside["waiting_energy_j"] == pytest.approx(100_000.0 * 500 / 5400)
    assert inside["profiled_over_measured_step"] == pytest.approx(1.25)
    assert inside["method"] == ("profiled shares x measured denoising stage "
                                "(energy: time x power of each activity)")
    # Energy missing on either side is missing, not 0; the time share still holds.
    unmeasured = waiting.in_measured_windows(profile, 224.0, None, 8.0)
    assert (unmeasured["waiting_energy_j"], unmeasured["method"]) == (None, "energy not measured")
    unsampled = {**profile, "energy_per_step_j": None, "waiting_energy_j": None}
    inside = waiting.in_measured_windows(unsampled, 224.0, 100_000.0, 8.0)
    assert inside["waiting_energy_j"] is None and inside["waiting_s"] == pytest.approx(67.2)
    assert inside["method"] == "energy of the profiled call not sampled"

def test_step_windows_come_from_the_profilers_step_marks():
    from torch.profiler import ProfilerActivity, profile, record_function

    x = torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            with record_function(step_profile.STEP_MARK):
                x @ x
        x @ x
    kernels, windows = step_profile.named_spans_of(prof.profiler.kineto_results.events())
    assert kernels == []  # CPU only: no GPU work in this trace
    assert len(windows) == 3 and all(a < b for a, b in windows)
    assert windows == sorted(windows) and windows[0][1] <= windows[1][0]


# Kernel names as an H200 profile of compiled FLUX shows them (cuBLAS, cuDNN, inductor, NCCL).
NAMED = [
    (0.0, 3.0, "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize256x128x64_warpgroupsize2x1x1"),
    (3.0, 4.0, "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN"),
    (4.0, 6.0, "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128"),
    (6.0, 6.5, "triton_poi_fused__to_copy_add_mul_native_layer_norm_3"),
    (6.5, 7.0, "triton_red_fused__to_copy_mean_mul_pow_rsqrt_4"),
    (7.0, 8.0, "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)"),
    (7.5, 8.0, "triton_tem_fused_mm_5"),  # overlaps the collective: another stream
    (12.0, 13.0, "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n"),  # outside the step
]


@pytest.mark.parametrize("name, expected", [
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize256x128x64", "matmul"),
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", "matmul"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn>",
     "matmul"),
    ("triton_tem_fused_mm_5", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128", "attention"),
    ("void flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>", "attention"),
    ("fmha_cutlassF_bf16_aligned_64x128_rf_sm80", "attention"),
    ("ncclDevKernel_AllGather_RING_LL", "communication"),
    ("triton_poi_fused__to_copy_add_mul_native_layer_norm_3", "other"),
    ("triton_per_fused_add_mul_rsqrt_8", "other"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>", "other"),
    ("Memcpy DtoD (Device -> Device)", "other"),
])
def test_kernels_are_classed_by_what_they_do(name, expected):
    assert step_profile.kernel_class(name) == expected


def test_a_steps_kernels_add_up_by_class_without_counting_overlap_twice():
    breakdown = step_profile.kernel_breakdown(NAMED, [(0.0, 10.0)], top=3)
    by_class = breakdown["by_class"]
    assert list(by_class) == ["matmul", "attention", "communication", "other"]
    # 3 + 1 s of cuBLAS and the Triton matmul's 0.5 s; the kernel after the step is not counted.
    assert by_class["matmul"] == {"ms_per_step": pytest.approx(4500.0), "kernels_per_step": 3}
    assert by_class["attention"]["ms_per_step"] == pytest.approx(2000.0)
    assert by_class["communication"]["ms_per_step"] == pytest.approx(1000.0)
    assert by_class["other"] == {"ms_per_step": pytest.approx(1000.0), "kernels_per_step": 2}
    top = breakdown["top_kernels"]
    assert [k["class"] for k in top] == ["matmul", "attention", "matmul"]
    assert top[0]["ms_per_step"] == pytest.approx(3000.0) and top[0]["calls_per_step"] == 1
    # Two steps: the means halve what one step held.
    two = step_profile.kernel_breakdown(NAMED, [(0.0, 5.0), (5.0, 10.0)])
    assert two["by_class"]["matmul"]["ms_per_step"] == pytest.approx(2250.0)
    with pytest.raises(ValueError):
        step_profile.kernel_breakdown(NAMED, [])


def test_a_steps_energy_is_its_mean_sampled_power_times_its_length():
    samples = [(1.0, 600.0), (6.0, 700.0), (11.0, 650.0), (30.0, 5000.0)]
    assert step_profile.step_energy_j(samples, [(0.0, 10.0), (10.0, 20.0)]) == \
        pytest.approx(650.0 * 10.0)
    assert step_profile.step_energy_j([(30.0, 500.0)], [(0.0, 10.0)]) is None


def test_a_profile_needs_a_gpu_and_two_steps(tmp_path):
    from conftest import TINY_FLUX, run_benchmark, with_flags

    for steps, message in (("1", "must be 0 (no profile) or at least 2"),
                           ("3", "profiles GPU kernels and this run has no GPU")):
        base = tmp_path / steps
        proc = run_benchmark(with_flags([*TINY_FLUX, "--workload.base_dir", str(base)],
                                        "--profile_steps", steps), tmp_path)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
        assert not base.exists()


def test_every_rank_profiles_after_measuring_and_rank_0_writes_the_profile(tmp_path):
    from conftest import (
        REPO, TINY_FLUX, load_results, only_run_dir, run_benchmark, with_flags, write_gpu_script,
    )

    base = tmp_path / "out"
    args = with_flags([*TINY_FLUX, "--workload.base_dir", str(base)], "--ulysses_degree", "2",
                      "--benchmark_iters", "2", "--no_save_images", "--idle_baseline_s", "0",
                      "--profile_steps", "3")
    # The measured windows on scripted GPUs drawing 300 W and 500 W.
    gpus = write_gpu_script(tmp_path / "gpus.json", power_w=[300.0, 500.0])
    proc = run_benchmark(args, tmp_path, nproc=2, MLENERGY_FAKE_GPUS=str(gpus),
                         entry=REPO / "tests" / "workers" / "benchmark_profiled_on_cpu.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(base)
    doc = load_results(run_dir)
    assert doc["num_iterations"] == 2 and doc["configurations"]["benchmark_iters"] == 2
    assert doc["run_identity"]["profile_steps"] == 3
    profile = doc["profile"]
    assert (profile["steps_profiled"], profile["steps_summarized"]) == (3, 2)
    assert profile["kernel_table"] == "profile.txt" and (run_dir / "profile.txt").is_file()
    assert [(r["rank"], r["gpu"]) for r in profile["ranks"]] == [(0, "0"), (1, "1")]
    for rank in profile["ranks"]:
        wall = rank["per_step"]["wall_s"]
        assert rank["steps"] == 2 and wall > 0
        # The scripted GEMM covers the first half of each step; nothing else runs on the "GPU".
        matmul = rank["by_class"]["matmul"]
        assert matmul["kernels_per_step"] == 1
        # Within a microsecond: kineto's wall-clock nanoseconds, as float seconds since 1970,
        # keep about 0.4 us.
        assert matmul["ms_per_step"] == pytest.approx(wall * 1e3 / 2, abs=1e-3)
        assert rank["by_class"]["other"] == {"ms_per_step": 0.0, "kernels_per_step": 0.0}
        assert rank["per_step"]["idle_s"] == pytest.approx(wall / 2, abs=1e-6)
        assert rank["top_kernels"][0]["class"] == "matmul"
        # 200 W throughout: the step's energy is 200 W x its length, half of it idle.
        assert rank["power_by_activity"]["compute"]["mean_w"] == 200.0
        assert rank["energy_per_step_j"] == pytest.approx(200.0 * wall, rel=1e-6)
        # (Up to the samples' 1 ms grid, which decides how many fall on either side.)
        assert rank["waiting_energy_j"] == pytest.approx(rank["energy_per_step_j"] / 2, rel=1e-3)
    log = (run_dir / "driver_log.txt").read_text()
    assert "Profile of 3 steps (after the measured phase): step" in log
    # Each rank's waiting inside the measured windows: its profile's shares (half the step
    # waiting, at uniform power) applied to the measured denoising stage of its own GPU.
    denoising = doc["stage_breakdown"]["denoising"]["time_s"]
    by_rank = {r["rank"]: r for r in profile["ranks"]}
    for watts, measured in zip((300.0, 500.0), profile["measured_windows"]):
        rank = by_rank[measured["rank"]]
        assert measured["gpu"] == rank["gpu"]
        assert measured["denoising_s"] == pytest.approx(denoising)
        assert measured["waiting_s"] == pytest.approx(denoising * rank["waiting_share"])
        assert measured["denoising_energy_j"] == pytest.approx(watts * denoising, rel=0.02)
        assert measured["waiting_energy_j"] == pytest.approx(
            measured["denoising_energy_j"] / 2, rel=1e-3)
        assert measured["profiled_over_measured_step"] == pytest.approx(
            rank["per_step"]["wall_s"] / doc["steps"]["mean"])
        assert measured["method"].startswith("profiled shares x measured denoising stage")
    assert "Waiting in the measured windows, per rank: rank 0 (GPU 0)" in log
