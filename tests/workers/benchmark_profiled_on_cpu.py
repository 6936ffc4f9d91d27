"""The benchmark with --profile_steps allowed on CPU, for the tests: what needs a GPU is replaced
and everything else is the real code (the profiled pipeline call on every rank, the step marks,
the summary, the gather, results.json `profile` and profile.txt).

Replaced: the plan's refusal on CPU; torch.cuda.synchronize (a no-op on CPU, where every op has
finished when it returns); the NVML power sampler, by one that reads 200 W every millisecond of
the profiled call; and, since a CPU trace has no GPU kernels, one kernel named as cuBLAS names its
GEMMs is added over the first half of every step."""

import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from mlenergy.diffusion.planning import plan as planning  # noqa: E402
from mlenergy.diffusion.profiling import step_profile  # noqa: E402

WATTS = 200.0
FAKE_GEMM = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_scripted"

planning._profile_steps = lambda config, launch: config.profile_steps
torch.cuda.synchronize = lambda *args, **kwargs: None


class ScriptedPowerSampler(threading.Thread):
    def __init__(self, device, period_s):
        super().__init__(daemon=True)
        self.started = None

    def run(self) -> None:
        self.started = time.time_ns() / 1e9

    def stop(self) -> list[tuple[float, float]]:
        self.join()
        end = time.time_ns() / 1e9
        count = int((end - self.started) / 1e-3)
        return [(self.started + i * 1e-3, WATTS) for i in range(count)]


step_profile._PowerSampler = ScriptedPowerSampler
_real_named_spans_of = step_profile.named_spans_of


def _with_a_gemm_in_each_step(events):
    kernels, windows = _real_named_spans_of(events)
    return kernels + [(a, (a + b) / 2, FAKE_GEMM) for a, b in windows], windows


step_profile.named_spans_of = _with_a_gemm_in_each_step

from mlenergy.diffusion import benchmark  # noqa: E402

if __name__ == "__main__":
    sys.exit(benchmark.main())
