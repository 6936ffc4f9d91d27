"""One line per run under a base directory: what each option bought and cost.

    python scripts/gpu/options_table.py RUN_BASE_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlenergy.diffusion.results.results_reader import RunResults  # noqa: E402


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main(base: Path) -> None:
    print(f"{'run':<100} {'s/img':>6} {'J/img':>7} {'peakGB':>6} {'compile s':>9} "
          f"{'recomp':>6} {'PSNR dB':>8} {'SSIM':>6} {'T5 GB':>11}")
    for path in sorted(base.glob("*/results.json"), key=lambda p: p.stat().st_mtime):
        stored = RunResults.load(path)
        compiled, quality = stored.section("compile"), stored.section("quality")
        fp8 = stored.section("fp8_t5_encoder")
        t5 = f"{fp8['bytes_before'] / 1e9:.2f}->{fp8['bytes_after'] / 1e9:.2f}" if fp8 else "-"
        psnr = quality.get("mean_psnr_db")
        if psnr is None and quality.get("identical_images"):
            psnr_text = "inf"
        else:
            psnr_text = _fmt(psnr, ".2f")
        seconds, joules = stored.time_per_output, stored.energy_per_output
        print(f"{path.parent.name:<100} {_fmt(seconds, '.3f'):>6} {_fmt(joules, ',.0f'):>7} "
              f"{_fmt(stored.peak_memory_gb, '.1f'):>6} "
              f"{_fmt(compiled.get('compile_time_s'), '.1f'):>9} "
              f"{str(compiled.get('recompiled_during_measurement', '-')):>6} {psnr_text:>8} "
              f"{_fmt(quality.get('mean_ssim'), '.4f'):>6} {t5:>11}")
        cache = compiled.get("kernel_cache") or {}
        hits = (f", kernel cache {cache.get('fx_graph_cache_hits')} hit(s) / "
                f"{cache.get('fx_graph_cache_misses')} miss(es)" if cache else "")
        watts = joules / seconds if joules and seconds else None
        print(f"{'':<4}attention {stored.section('attention').get('used')}, "
              f"{_fmt(watts, '.0f')} W, compiled {compiled.get('compiled', '-')}{hits}, warm-up "
              + ", ".join(f"{t:.2f}" for t in stored.warmup_iteration_times) + " s")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
