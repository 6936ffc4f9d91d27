"""Points measured by one process: which points go together, and what a process's end means for
each of them.

Points whose pipelines are the same (their identities differ only in what a pipeline call takes:
batch size, seed, iteration counts, prompts; see `group.PER_CALL_FIELDS`) and that run on as many
processes are measured by one launch, which loads the pipeline once (`benchmark.py ... --then
...`). Imports, the process group, loading, the idle baseline: paid once per group instead of once
per point. `--one_point_per_process` gives every point its own launch, as before.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from mlenergy.diffusion.planning import shared_pipeline as point_group
from mlenergy.diffusion.sweep.point import Point, results_complete, results_path


@dataclass
class Group:
    """Points that one launch measures one after another, smallest batch first (a batch too big
    for the GPU then fails after the others are measured)."""

    points: list[Point]

    @property
    def nproc(self) -> int:
        return self.points[0].nproc

    @property
    def benchmark_args(self) -> list[str]:
        return point_group.join_points([p.benchmark_args for p in self.points])

    @property
    def run_dir(self) -> Path:
        return self.points[0].run_dir

    def label(self) -> str:
        if len(self.points) == 1:
            return self.points[0].label()
        batches = ",".join(str(p.batch_size) for p in self.points)
        first = self.points[0]
        opts = f" [{first.options}]" if first.options else ""
        return (f"{first.model_id} batch {batches} ulysses {first.ulysses_degree} x ring "
                f"{first.ring_degree}{opts} ({len(self.points)} points, one process)")


def _key(point: Point) -> str:
    return json.dumps([point.nproc, point_group.pipeline_key(point.identity or {})],
                      sort_keys=True, default=str)


def make_groups(points: list[Point], one_point_per_process: bool = False) -> list[Group]:
    """The pending points as launches, in the order of each group's first point."""
    pending = [p for p in points if p.status == "pending"]
    if one_point_per_process:
        return [Group([p]) for p in pending]
    groups: dict[str, list[Point]] = {}
    for point in pending:
        groups.setdefault(_key(point), []).append(point)
    return [Group(sorted(members, key=lambda p: p.batch_size)) for members in groups.values()]


def settle(group: Group, code: int | None, why_stopped: str | None, started: float,
           by_signal: bool = False) -> list[Point]:
    """Each point's status once the group's launch has ended (`code` None: it was stopped, for
    `why_stopped`; `by_signal`: because the sweep was). Points with complete results are done; the first without is the one the
    process failed in; after it, points the process never reached go back to pending (returned,
    to launch again). Each point's seconds run from the previous point's results (or the
    launch's start) to its own."""
    from mlenergy.diffusion.output import rundir

    unreached: list[Point] = []
    since = started
    failed = None
    for point in group.points:
        path = results_path(point.run_dir)
        if failed is None and results_complete(path, point):
            finished = os.stat(path).st_mtime
            point.status, point.reason = "done", None
            point.started, point.finished = since, finished
            point.seconds, since = finished - since, finished
            point.per_output = rundir.per_output(point.run_dir)
        elif failed is None:
            failed = point
            point.status, point.reason = _failure(code, why_stopped, by_signal)
            point.started, point.finished = since, time.time()
            point.seconds = point.finished - since
        elif by_signal:
            point.status, point.reason = "not_run", f"the sweep was {why_stopped}"
        else:
            point.status, point.reason = "pending", None
            point.attempts -= 1  # it never ran: not an attempt
            unreached.append(point)
    return unreached


def _failure(code: int | None, why_stopped: str | None, by_signal: bool) -> tuple[str, str]:
    if code is None:
        return ("interrupted" if by_signal else "failed"), why_stopped or "stopped"
    if code != 0:
        return "failed", f"exit status {code}"
    return "failed", "exited 0 but wrote no complete results.json"
