"""The benchmark CLI with issue 17's experiments switched on by environment variables, for GPU
sessions before the options exist as flags. Same arguments as mlenergy/diffusion/benchmark.py.

    MLENERGY_FUSE_QKV=1          fuse each attention's QKV projections before compiling
    MLENERGY_FP8_DENOISER=1      torchao FP8 (row-wise) of the denoiser's linear layers
    MLENERGY_INDUCTOR_REORDER=1  inductor's reorder_for_compute_comm_overlap
    MLENERGY_UNFIXED_RING=1      leave xDiT's ring attention as it is (reproduces the dynamo crash)
    MLENERGY_EAGER_RING=1        run ring attention eagerly, out of the compiled blocks
    MLENERGY_PROFILE_STEPS=N     after the measured iterations, profile one call of N steps
    MLENERGY_EXTRA_OUT=DIR       where the FP8 summary and the profiles go (one file per rank)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from mlenergy.diffusion import benchmark  # noqa: E402
from mlenergy.diffusion.engine import xdit  # noqa: E402
from mlenergy.diffusion.planning import options  # noqa: E402

ENV = os.environ
OUT = Path(ENV.get("MLENERGY_EXTRA_OUT", "."))
TAG = ENV.get("MLENERGY_TAG", "run")
RANK = int(ENV.get("RANK", "0"))


def _write(name: str, text: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / name).write_text(text)


def keep_ring_attention_eager() -> bool:
    """The first fix tried: ring attention run eagerly, a graph break around it in every
    block (measured slower than tracing it; docs/benchmarks.md)."""
    import xfuser.model_executor.layers.usp as usp

    usp.ring_attn = torch.compiler.disable(usp.ring_attn)
    return True


def patch_compile() -> None:
    from mlenergy.diffusion.kernels import quantize

    original = options.compile_denoiser

    def compile_denoiser(plan, denoiser):
        report = {}
        if ENV.get("MLENERGY_FUSE_QKV") == "1":
            report["fused_attention_layers"] = quantize.fuse_qkv(denoiser)
        if ENV.get("MLENERGY_FP8_DENOISER") == "1":
            refusal = quantize.check_fp8(plan.device_type, plan.dtype)
            if refusal:
                raise SystemExit(f"error: {refusal}")
            report["fp8"] = quantize.quantize_fp8(denoiser)
        if report and RANK == 0:
            _write(f"{TAG}-denoiser.json", json.dumps(report, indent=1))
        return original(plan, denoiser)

    options.compile_denoiser = compile_denoiser


def patch_profile(steps: int) -> None:
    from mlenergy.diffusion.profiling import step_profile

    original = benchmark._measure

    def measure(plan, ranks, pipeline, batches, probes):
        measured = original(plan, ranks, pipeline, batches, probes)
        inner = getattr(pipeline, "module", pipeline)
        denoiser = getattr(inner, plan.spec.family.denoiser_slot)
        try:
            summary, table = step_profile.profile_call(
                lambda: xdit.generate(pipeline, plan, batches[0], seed=plan.seed,
                                      device=ranks.device, steps=steps), denoiser, ranks.device)
        except Exception as err:  # a failed profile must not cost the measured run
            import traceback

            _write(f"{TAG}-profile-rank{ranks.rank}.txt", traceback.format_exc())
            print(f"profile failed on rank {ranks.rank}: {err!r}", file=sys.stderr, flush=True)
            return measured
        _write(f"{TAG}-profile-rank{ranks.rank}.json", json.dumps(summary, indent=1))
        _write(f"{TAG}-profile-rank{ranks.rank}.txt", table)
        return measured

    benchmark._measure = measure


def main() -> int:
    if ENV.get("MLENERGY_UNFIXED_RING") == "1":
        xdit.make_ring_attention_traceable = lambda: False
    if ENV.get("MLENERGY_EAGER_RING") == "1":
        xdit.make_ring_attention_traceable = keep_ring_attention_eager
    if ENV.get("MLENERGY_INDUCTOR_REORDER") == "1":
        torch._inductor.config.reorder_for_compute_comm_overlap = True
    patch_compile()
    if int(ENV.get("MLENERGY_PROFILE_STEPS", "0")) > 0:
        patch_profile(int(ENV["MLENERGY_PROFILE_STEPS"]))
    return benchmark.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
