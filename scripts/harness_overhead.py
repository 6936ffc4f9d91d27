"""Does the harness cost anything? A bare diffusers pipeline call against the benchmark's own
path (xDiT wrapper + measured iteration), in one process, on one GPU, timed the same way.

    torchrun --nproc_per_node=1 scripts/harness_overhead.py [--model_id ID] [--height H]
        [--width W] [--steps S] [--iters N] [--out FILE]

The two are interleaved iteration by iteration, so that the GPU's warming affects both alike.
Both use the same windows (device synchronisation, barrier, Zeus energy counter).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from mlenergy.diffusion.engine import xdit  # noqa: E402
from mlenergy.diffusion.inputs.config import parse_cli  # noqa: E402
from mlenergy.diffusion.models import pipelines  # noqa: E402
from mlenergy.diffusion.planning.plan import make_plan  # noqa: E402
from mlenergy.diffusion.planning.prompts import fallback_prompts  # noqa: E402
from mlenergy.diffusion.probes.energy import EnergyMeter  # noqa: E402
from mlenergy.diffusion.probes.gpus import RunGpus  # noqa: E402
from mlenergy.diffusion.process import runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model_id", default="black-forest-labs/FLUX.1-dev")
    parser.add_argument("--height", type=int, default=1024)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--weights", default="random", choices=["random", "tiny"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    plan = make_plan(parse_cli([
        "workload:text-to-image", "--workload.model_id", args.model_id,
        "--workload.weights", args.weights, "--workload.height", str(args.height),
        "--workload.width", str(args.width), "--workload.inference_steps", str(args.steps),
    ]))
    ranks = runtime.init_process_group(plan.launch)
    engine = xdit.engine_config(plan)
    pipe = pipelines.build_pipeline(plan.spec, args.weights, dtype=getattr(torch, plan.dtype),
                                    device=ranks.device,
                                    max_sequence_length=plan.max_sequence_length)
    pipe.set_progress_bar_config(disable=True)
    kwargs = xdit.call_kwargs(plan)
    prompts = fallback_prompts()
    meter = EnergyMeter(RunGpus.for_ranks(ranks))

    def bare(i):
        generator = torch.Generator(device=ranks.device).manual_seed(plan.seed + i)
        return pipe(prompt=[prompts[i % len(prompts)]], generator=generator, **kwargs).images

    wrapped = xdit.wrap_pipeline(plan, pipe, engine)

    def harness(i):
        return xdit.generate(wrapped, plan, [prompts[i % len(prompts)]], seed=plan.seed + i,
                             device=ranks.device)

    samples = {"diffusers": [], "benchmark": []}
    bare(0), harness(0)  # warm-up of both paths, unmeasured
    for i in range(args.iters):
        for name, call in (("diffusers", bare), ("benchmark", harness)):
            meter.begin(f"{name}-{i}")
            call(i)
            m = meter.end(f"{name}-{i}")
            samples[name].append((m.time, m.total_gpu_energy))

    summary = {}
    for name, rows in samples.items():
        times = [t for t, _ in rows]
        energies = [e for _, e in rows if e is not None]
        summary[name] = {
            "seconds_per_image_median": statistics.median(times),
            "seconds_per_image_mean": statistics.fmean(times),
            "joules_per_image_median": statistics.median(energies) if energies else None,
            "joules_per_image_mean": statistics.fmean(energies) if energies else None,
            "samples": rows,
        }
    b, d = summary["benchmark"], summary["diffusers"]
    summary["ratio_time"] = b["seconds_per_image_median"] / d["seconds_per_image_median"]
    if b["joules_per_image_median"] and d["joules_per_image_median"]:
        summary["ratio_energy"] = b["joules_per_image_median"] / d["joules_per_image_median"]
    summary["setup"] = {"model_id": args.model_id, "height": args.height, "width": args.width,
                        "steps": args.steps, "iters": args.iters,
                        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    runtime.shutdown()


if __name__ == "__main__":
    main()
