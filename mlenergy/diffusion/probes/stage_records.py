"""The stage probe: the hooks of probes/stages.py around each iteration, and the arithmetic over
their records (one record per iteration from every rank's, the remainder of an iteration outside
its stages, the means over iterations), handed back as a typed section."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from mlenergy.diffusion.probes.protocol import MeasuredPhase
from mlenergy.diffusion.probes.stages import STAGES, StageRecorder
from mlenergy.diffusion.process import runtime
from mlenergy.diffusion.results import stats
from mlenergy.diffusion.results.sections import Section

logger = logging.getLogger("mlenergy.diffusion")


@dataclass
class StageTotals(Section):
    time_s: float
    energy_j: float | None


@dataclass
class StageBreakdown(Section):
    """results.json `stage_breakdown`: mean per iteration of each stage and the remainder."""

    text_encoding: StageTotals
    denoising: StageTotals
    decoding: StageTotals
    remainder: StageTotals

    def items(self) -> list[tuple[str, StageTotals]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]

    @classmethod
    def of(cls, records: list[dict]) -> StageBreakdown:
        return cls(**{stage: StageTotals(**totals)
                      for stage, totals in stage_breakdown(records).items()})


@dataclass
class StepSummary(Section):
    """results.json `steps`: statistics of every measured denoising step."""

    n: int
    mean: float
    median: float
    p90: float
    p99: float
    stdev: float | None


@dataclass
class IterationStages(Section):
    """One measured iteration's stages as the rank they come from saw them: its entries in
    results.json `iterations`."""

    # Per stage (and the remainder): time, energy, per-GPU energy, how it was measured, calls.
    stages: dict[str, dict]
    # The steps' source and latencies (None when denoising could not be split into steps).
    steps: dict | None
    denoiser_forwards: int
    # [stage, start, end] wall-clock times: what the power plot marks.
    stage_boundaries: list[list]
    stage_rank_window: list[float]

    @classmethod
    def of(cls, record: dict) -> IterationStages:
        return cls(stages=record["stages"], steps=record["steps"],
                   denoiser_forwards=record["denoiser_forwards"],
                   stage_boundaries=record["boundaries"], stage_rank_window=record["window"])


@dataclass
class StageSection(Section):
    """What the stage probe hands back: results.json `stage_breakdown`, `stage_fence` and
    `steps`, and each iteration's stages (written inside `iterations`)."""

    stage_breakdown: StageBreakdown
    stage_fence: str
    steps: StepSummary | None
    iterations: list[IterationStages]

    def to_results(self) -> dict:
        # The iterations' stages are written inside each iteration's entry, not here.
        return {"stage_breakdown": self.stage_breakdown.to_results(),
                "stage_fence": self.stage_fence,
                "steps": self.steps.to_results() if self.steps else None}


class StageProbe:
    """The stage hooks of one point; keeps each measured iteration's record until gathered."""

    def __init__(self, recorder: StageRecorder):
        self.recorder = recorder
        self._records: list[dict] = []

    @classmethod
    def start(cls, plan, gpus, pipeline) -> StageProbe:
        recorder = StageRecorder(pipeline, gpus, plan.inference_steps)
        logger.info("Stage hooks: %s; step-end callback %s", recorder.describe(),
                    "passed to the pipeline" if recorder.accepts_step_callback else "not taken")
        return cls(recorder)

    def begin_iteration(self, measured: bool) -> None:
        self.recorder.begin_iteration()

    def end_iteration(self, measured: bool) -> None:
        # Warm-up iterations count too: they show which boundaries every rank crosses.
        iteration = self.recorder.end_iteration()
        if measured:
            self._records.append(self.recorder.record(iteration))

    def gather(self, phase: MeasuredPhase) -> StageSection | None:
        ranks = self.recorder.ranks
        per_rank = runtime.all_gather_object(self._records)
        if not ranks.is_main:
            return None
        combined = combine_ranks(per_rank, ranks.local_world_size)
        for record, energy in zip(combined, phase.iteration_energies):
            add_remainder(record, energy)
        return StageSection(stage_breakdown=StageBreakdown.of(combined),
                            stage_fence=self.recorder.fence_mode,
                            steps=StepSummary.from_results(step_summary(combined)),
                            iterations=[IterationStages.of(r) for r in combined])


def add_remainder(record: dict, iteration_energy: float | None) -> None:
    """What the stages leave of the iteration: time against the iteration's window as the
    stages' own rank saw it (ranks leave a barrier microseconds to milliseconds apart, so another
    rank's window need not contain them); energy against the iteration's counter window, when
    every stage that ran was measured."""
    stages = record["stages"]
    ran = [s for s in STAGES if stages[s]["time_s"] > 0]
    energies = [stages[s]["energy_j"] for s in ran]
    energy = None
    if iteration_energy is not None and ran and None not in energies:
        energy = iteration_energy - sum(energies)
    start, end = record["window"]
    stages["remainder"] = {"time_s": end - start - sum(stages[s]["time_s"] for s in STAGES),
                           "energy_j": energy}


def stage_breakdown(records: list[dict]) -> dict:
    """Mean per iteration of each stage and the remainder: {stage: {time_s, energy_j}}.
    energy_j is None unless every iteration measured that stage."""
    out = {}
    for stage in (*STAGES, "remainder"):
        times = [r["stages"][stage]["time_s"] for r in records]
        energies = [r["stages"][stage]["energy_j"] for r in records]
        out[stage] = {
            "time_s": sum(times) / len(times),
            "energy_j": None if None in energies else sum(energies) / len(energies),
        }
    return out


def step_summary(records: list[dict]) -> dict | None:
    """Statistics of every measured step over all iterations."""
    steps = [s for r in records if r["steps"] for s in r["steps"]["latency_s"]]
    if not steps:
        return None
    summary = stats.summarize(steps)
    return {k: summary[k] for k in ("n", "mean", "median", "p90", "p99", "stdev")}


def combine_ranks(per_rank: list[list[dict]], ranks_per_node: int) -> list[dict]:
    """One record per iteration from every rank's records, seen from the lowest rank that ran the
    most stages (xDiT decodes on the last rank only; only a rank that decodes knows where its
    denoising ended); a stage that rank did not run comes from the lowest rank that did.

    Across nodes each node's GPUs were read by its own ranks: a stage's energy adds the first
    runner of every node, and is unmeasured when some node did not run the stage."""
    world = len(per_rank)
    combined = []
    for i, base in enumerate(per_rank[0]):
        ran = lambda r, stage: per_rank[r][i]["stages"][stage]["calls"] > 0  # noqa: E731
        # One rank's view where possible: boundaries of different ranks need not nest.
        order = sorted(range(world), key=lambda r: (-sum(ran(r, s) for s in STAGES), r))
        record = {"stages": {}, "boundaries": [], "steps": base["steps"],
                  "denoiser_forwards": base["denoiser_forwards"],
                  "window": per_rank[order[0]][i]["window"], "rank": order[0]}
        for stage in STAGES:
            runners = [r for r in order if ran(r, stage)]
            pick = runners[0] if runners else 0
            chosen = dict(per_rank[pick][i]["stages"][stage], rank=pick)
            nodes = world // ranks_per_node
            if nodes > 1 and runners:
                firsts = [next((r for r in runners if r // ranks_per_node == n), None)
                          for n in range(nodes)]
                parts = [per_rank[r][i]["stages"][stage]["gpu_energy_j"] if r is not None else None
                         for r in firsts]
                if None in parts:
                    chosen["gpu_energy_j"], chosen["energy_j"] = None, None
                else:
                    merged = {k: v for part in parts for k, v in part.items()}
                    chosen["gpu_energy_j"], chosen["energy_j"] = merged, sum(merged.values())
            record["stages"][stage] = chosen
            record["boundaries"] += [b for b in per_rank[pick][i]["boundaries"] if b[0] == stage]
            if stage == "denoising":
                record["steps"] = per_rank[pick][i]["steps"]
                record["denoiser_forwards"] = per_rank[pick][i]["denoiser_forwards"]
        combined.append(record)
    return combined
