"""A run whose pipeline decodes NaN is not measured as if it made images: every measured
decoder output is checked on the device, the counts are in results.json, and a run with a
non-finite output fails on every rank with one line, before results.json is written."""

from __future__ import annotations

from conftest import TINY_FLUX, load_results, only_run_dir, run_benchmark, with_flags
from fakehub import save_tiny_flux

SMALL = ["--workload.height", "64", "--workload.width", "64", "--workload.inference_steps", "2",
         "--warmup_iters", "1", "--benchmark_iters", "2", "--idle_baseline_s", "0"]


def test_every_decoder_output_is_counted_finite_on_one_and_two_processes(tmp_path):
    for nproc in (1, 2):
        base = tmp_path / f"ok{nproc}"
        args = with_flags([*TINY_FLUX, "--workload.base_dir", str(base)], *SMALL,
                          "--ulysses_degree", str(nproc))
        proc = run_benchmark(args, tmp_path, nproc=nproc)
        assert proc.returncode == 0, proc.stderr[-3000:]
        checked = load_results(only_run_dir(base))["decoded_values"]
        assert checked["measured_non_finite"] == checked["warmup_non_finite"] == 0
        # At least one decoder call per iteration, on whichever ranks xDiT decodes.
        assert checked["measured_decoder_calls"] >= 2 and checked["warmup_decoder_calls"] >= 1
        assert checked["measured_decoder_calls"] % 2 == 0


def test_a_pipeline_that_decodes_nan_fails_in_one_line_and_writes_no_results(tmp_path):
    # A real checkpoint whose denoiser outputs NaN (its output bias is NaN), loaded from a
    # local directory as users load theirs.
    model = save_tiny_flux(tmp_path / "models" / "nan-flux", bias_shift=float("nan"))
    for nproc in (1, 2):
        base = tmp_path / f"nan{nproc}"
        args = ["workload:t2i", "--workload.model_id", str(model), "--workload.weights",
                "pretrained", "--workload.base_dir", str(base), *SMALL,
                "--ulysses_degree", str(nproc)]
        proc = run_benchmark(args, tmp_path, nproc=nproc)
        assert proc.returncode != 0
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, proc.stderr[-3000:]
        assert "decoder outputs of the measured iterations hold NaN or infinite values" in \
            errors[0] and "no results.json is written" in errors[0]
        assert "s per iteration" in errors[0]
        # Under torchrun the one traceback is torchrun's own, reporting its workers' status.
        assert proc.stderr.count("Traceback") == (nproc > 1), proc.stderr[-3000:]
        run_dir = only_run_dir(base)
        assert not (run_dir / "results.json").exists()
        assert "hold NaN or infinite values" in (run_dir / "driver_log.txt").read_text()
