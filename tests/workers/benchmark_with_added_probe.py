"""The benchmark with one probe added the way a new probe is added (probes/__init__.py
ADDED_PROBES): it counts the iterations each rank was told of and hands them back as a typed
section, which results.json must carry under the section's RESULTS_KEY."""

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlenergy.diffusion import probes  # noqa: E402
from mlenergy.diffusion.process import runtime  # noqa: E402
from mlenergy.diffusion.results.sections import Section  # noqa: E402


@dataclass
class IterationsSeen(Section):
    RESULTS_KEY = "iterations_seen_by_an_added_probe"

    warmup_per_rank: list[int]
    measured_per_rank: list[int]


class IterationCountingProbe:
    def __init__(self, ranks):
        self.ranks, self.begun, self.seen = ranks, None, {False: 0, True: 0}

    @classmethod
    def start(cls, plan, gpus, pipeline):
        return cls(gpus.ranks)

    def begin_iteration(self, measured: bool) -> None:
        self.begun = measured

    def end_iteration(self, measured: bool) -> None:
        assert self.begun is measured, "an iteration ended that did not begin"
        self.seen[measured] += 1

    def gather(self, phase):
        per_rank = runtime.all_gather_object(self.seen)
        if not self.ranks.is_main:
            return None
        return IterationsSeen(warmup_per_rank=[seen[False] for seen in per_rank],
                              measured_per_rank=[seen[True] for seen in per_rank])


probes.ADDED_PROBES = (*probes.ADDED_PROBES, IterationCountingProbe)

from mlenergy.diffusion import benchmark  # noqa: E402

if __name__ == "__main__":
    sys.exit(benchmark.main())
