"""Text-to-video on the tiny models: playable mp4 files with the requested frames, on one
process and on two under Ulysses 2, and clear refusals of what a model cannot generate."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest

from conftest import REPO, load_results, only_run_dir, run_benchmark, with_flags

KEEPING_FRAMES = REPO / "tests" / "workers" / "benchmark_keeping_frames.py"

# (model, frames): frame counts each model can take (1 + 4k, or Latte's fixed 16).
VIDEO_MODELS = [
    ("THUDM/CogVideoX-2b", 9),
    ("Wan-AI/Wan2.1-T2V-1.3B-Diffusers", 9),
    ("tencent/HunyuanVideo", 9),
    ("maxin-cn/Latte-1", 16),
]
# xDiT's Latte under Ulysses 2 does not reproduce its one-process output (its temporal attention
# goes through the same sequence-parallel wrapper as the spatial one); the others do.
REPRODUCED_UNDER_ULYSSES = {"THUDM/CogVideoX-2b", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
                            "tencent/HunyuanVideo"}


def video_args(model_id: str, frames: int, base, *extra: str) -> list[str]:
    return ["workload:t2v", "--workload.model_id", model_id, "--workload.weights", "tiny",
            "--workload.base_dir", str(base), "--workload.height", "64", "--workload.width", "96",
            "--workload.num_frames", str(frames), "--workload.fps", "6",
            "--workload.inference_steps", "2", "--benchmark_iters", "1", *extra]


def saved_files(run_dir) -> list:
    """What the benchmark saved (not the frames KEEPING_FRAMES keeps beside it)."""
    return sorted(p for p in (run_dir / "video_outputs").iterdir() if p.suffix != ".npy")


def decoded_videos(run_dir) -> dict[str, np.ndarray]:
    return {p.name: iio.imread(p, plugin="pyav") for p in saved_files(run_dir)}


def check_run(run_dir, model_id: str, frames: int, processes: int) -> dict[str, np.ndarray]:
    doc = load_results(run_dir)
    assert doc["task"] == "text-to-video" and doc["model_id"] == model_id
    assert (doc["num_frames"], doc["fps"]) == (frames, 6)
    # The ML.ENERGY keys keep their order, with frames and fps after the seed.
    assert list(doc)[7:10] == ["seed", "num_frames", "fps"]
    assert doc["total_videos"] == 1 and doc["avg_time_per_video"] > 0
    assert doc["throughput_videos_per_sec"] == pytest.approx(1 / doc["avg_time_per_video"])
    assert doc["energy_per_video"] is None and "iteration_energy_measurements" not in doc
    assert doc["num_processes"] == processes
    # Videos warm up with one step at the measured shapes unless told otherwise.
    assert doc["configurations"]["warmup_steps"] == 1
    summary = (run_dir / "driver_log.txt").read_text()
    # The summary speaks of videos (its p90 row needs more iterations than these tests run).
    assert "time / video " in summary and "energy / video " in summary
    assert "/ image" not in summary and "images / s" not in summary
    videos = decoded_videos(run_dir)
    assert list(videos) == [name.split("/")[-1] for it in doc["iterations"] for name in it["videos"]]
    for path in saved_files(run_dir):
        assert path.suffix == ".mp4" and path.name.startswith("i0-0_")
        assert iio.immeta(path, plugin="pyav")["fps"] == pytest.approx(6)
    for video in videos.values():
        assert video.shape == (frames, 64, 96, 3)
        assert video.std() > 1  # frames hold an image, not a blank
    return videos


@pytest.mark.parametrize("model_id,frames", VIDEO_MODELS)
def test_every_video_family_writes_playable_videos_on_one_and_two_processes(tmp_path, model_id,
                                                                           frames):
    one = run_benchmark(video_args(model_id, frames, tmp_path / "one"), tmp_path,
                        entry=KEEPING_FRAMES)
    assert one.returncode == 0, one.stderr[-3000:]
    run_dir = only_run_dir(tmp_path / "one")
    assert run_dir.name.startswith("batch-1+size-64x96+steps-2+seed-48105+uly-1+ring-1+tc-False")
    assert "+fps-6+" in run_dir.name
    assert ("+frames-" in run_dir.name) == (model_id != "maxin-cn/Latte-1")
    single = check_run(run_dir, model_id, frames, processes=1)

    two = run_benchmark(video_args(model_id, frames, tmp_path / "two", "--ulysses_degree", "2"),
                        tmp_path, nproc=2, entry=KEEPING_FRAMES)
    assert two.returncode == 0, two.stderr[-3000:]
    split = check_run(only_run_dir(tmp_path / "two"), model_id, frames, processes=2)
    assert list(split) == list(single)  # same prompts, same names
    if model_id in REPRODUCED_UNDER_ULYSSES:
        # The frames before coding are equal up to float32 rounding: at most one level of 255,
        # in a few values (lossy H.264 can spread such a level over many pixels).
        for name in single:
            a, b = (np.load(only_run_dir(tmp_path / d) / "video_outputs" / f"{name}.npy")
                    for d in ("one", "two"))
            diff = np.abs(a - b)
            assert a.shape == (frames, 64, 96, 3) and a.std() > 1
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (name, diff.max(), diff.mean())


@pytest.mark.parametrize("extra,message", [
    (["--workload.model_id", "Wan-AI/Wan2.1-T2V-1.3B-Diffusers", "--workload.num_frames", "16"],
     "can generate 1 + 4k frames (e.g. 17, 33, 49, 81), not 16; use --workload.num_frames 13 or 17"),
    (["--workload.model_id", "maxin-cn/Latte-1", "--workload.num_frames", "17"],
     "generates exactly 16 frames"),
    (["--workload.fps", "0"], "--workload.fps must be at least 1"),
    (["--workload.num_frames", "0"], "--workload.num_frames must be at least 1"),
])
def test_bad_video_input_is_one_clear_line(tmp_path, extra, message):
    base = tmp_path / "out"
    proc = run_benchmark(["workload:t2v", "--workload.weights", "tiny", "--workload.base_dir",
                          str(base), *extra], tmp_path)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], proc.stderr
    assert not base.exists()


def test_the_reference_flux_video_command_and_the_reverse_are_refused(tmp_path):
    flux = ["workload:t2v", "--workload.model_id", "black-forest-labs/FLUX.1-dev",
            "--workload.base_dir", str(tmp_path / "flux_t2v"), "--workload.batch_size", "5",
            "--workload.height", "512", "--workload.width", "512", "--workload.num_frames", "16",
            "--workload.fps", "8", "--ulysses_degree", "2", "--ring_degree", "2"]
    proc = run_benchmark(flux, tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "FLUX.1-dev is a text-to-image model; use the workload:t2i subcommand" in proc.stderr
    wan = ["workload:t2v", "--workload.model_id", "Wan-AI/Wan2.1-T2V-14B-Diffusers",
           "--workload.base_dir", str(tmp_path / "wan"), "--workload.num_frames", "16",
           "--ulysses_degree", "2", "--ring_degree", "2"]
    proc = run_benchmark(wan, tmp_path)
    assert proc.returncode == 2 and "can generate 1 + 4k frames" in proc.stderr
    reverse = ["workload:t2i", "--workload.model_id", "tencent/HunyuanVideo",
               "--workload.base_dir", str(tmp_path / "hv")]
    proc = run_benchmark(reverse, tmp_path)
    assert proc.returncode == 2
    assert "tencent/HunyuanVideo is a text-to-video model; use the workload:t2v" in proc.stderr
    assert not any((tmp_path / d).exists() for d in ("flux_t2v", "wan", "hv"))


def test_a_video_run_is_compared_with_its_reference_frame_by_frame(tmp_path):
    model = "Wan-AI/Wan2.1-T2V-1.3B-Diffusers"
    reference = tmp_path / "reference"
    proc = run_benchmark(with_flags(video_args(model, 9, reference), "--benchmark_iters", "2"),
                         tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference_dir = only_run_dir(reference)
    rerun = tmp_path / "rerun"
    proc = run_benchmark(with_flags(video_args(model, 9, rerun), "--benchmark_iters", "2",
                                    "--reference_run", str(reference_dir)), tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    quality = load_results(only_run_dir(rerun))["quality"]
    # The same seed, prompts and weights on the same machine: the same frames, read back from
    # both files.
    assert (quality["num_images"], quality["identical_images"]) == (2, 2)
    assert quality["mean_psnr_db"] is None and quality["mean_ssim"] == pytest.approx(1.0)
    assert all(v["frames"] == 9 and v["image"].endswith(".mp4") for v in quality["images"])
    # Other frames are refused before anything loads, in one line.
    proc = run_benchmark(with_flags(video_args(model, 13, tmp_path / "other"),
                                    "--benchmark_iters", "2", "--reference_run",
                                    str(reference_dir)), tmp_path)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "has num_frames 9 but this run has 13" in lines[0]


def test_two_videos_that_differ_have_a_finite_psnr_over_all_their_frames(tmp_path):
    from diffusers.utils import export_to_video
    from PIL import Image

    from mlenergy.diffusion.results import quality

    rng = np.random.default_rng(0)
    # Smooth frames (a gradient moving across), as codecs keep them well; the other video
    # adds a little noise.
    ramp = np.linspace(0, 200, 96)[None, :, None] + np.linspace(0, 50, 64)[:, None, None]
    frames = [np.clip(ramp + 3 * i, 0, 255).repeat(3, axis=2).astype(np.uint8) for i in range(9)]
    noisy = [np.clip(f + rng.normal(0, 8, f.shape), 0, 255).astype(np.uint8) for f in frames]
    for name, video in (("a.mp4", frames), ("b.mp4", noisy)):
        export_to_video([Image.fromarray(f) for f in video], str(tmp_path / name), fps=6)
    same = quality.compare_images(tmp_path / "a.mp4", tmp_path / "a.mp4")
    assert same == {"psnr_db": None, "ssim": pytest.approx(1.0), "identical": True, "frames": 9}
    differ = quality.compare_images(tmp_path / "b.mp4", tmp_path / "a.mp4")
    assert not differ["identical"] and differ["frames"] == 9
    assert 15 < differ["psnr_db"] < 60 and 0 < differ["ssim"] < 1
