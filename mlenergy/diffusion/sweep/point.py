"""One point of a sweep and what counts as done. No torch here: the Slurm task runner imports
this on every task, and it must start in well under a second."""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from mlenergy.diffusion.results.files import RESULTS

# done / already_done / skipped / failed are final; interrupted: stopped by a signal to the sweep;
# not_run: still pending when the sweep was stopped.
STATUSES = ("done", "already_done", "skipped", "failed", "interrupted", "not_run")


@dataclass
class Point:
    model_id: str
    batch_size: int
    ulysses_degree: int
    ring_degree: int
    # The option set's flags, as one string for people (labels, the summary).
    options: str
    benchmark_args: list[str]
    run_dir: Path | None = None
    status: str = "pending"
    reason: str | None = None
    log: Path | None = None
    seconds: float | None = None
    attempts: int = 0
    command: list[str] = field(default_factory=list)
    # The device slots (CUDA_VISIBLE_DEVICES entries) a packed point ran on.
    devices: list[str] | None = None
    started: float | None = None
    finished: float | None = None
    # Run directories of the points that ran on this node while this one did.
    shared_node_with: list[str] = field(default_factory=list)
    # Every setting that changes the numbers (`rundir.identity` of the point's plan): what its
    # results.json must hold for the point to count as done.
    identity: dict | None = None
    # Once done: seconds and joules per image or video (rundir.per_output).
    per_output: dict | None = None

    @property
    def nproc(self) -> int:
        return self.ulysses_degree * self.ring_degree

    def headline(self) -> str:
        """`0.675 s/image, 3,622 J/image` of a done point; empty otherwise."""
        if not self.per_output or self.per_output.get("seconds") is None:
            return ""
        unit, joules = self.per_output["unit"], self.per_output.get("joules")
        energy = f"{joules:,.0f} J/{unit}" if joules is not None else "energy not measured"
        return f"{self.per_output['seconds']:.3f} s/{unit}, {energy}"

    def label(self) -> str:
        opts = f" [{self.options}]" if self.options else ""
        return (f"{self.model_id} batch {self.batch_size} ulysses {self.ulysses_degree} x ring "
                f"{self.ring_degree}{opts}")

    def to_json(self) -> dict:
        return {
            "model_id": self.model_id, "batch_size": self.batch_size,
            "ulysses_degree": self.ulysses_degree, "ring_degree": self.ring_degree,
            "nproc": self.nproc, "options": self.options, "status": self.status,
            "reason": self.reason,
            "run_dir": None if self.run_dir is None else str(self.run_dir),
            "log": None if self.log is None else str(self.log),
            "seconds": self.seconds, "attempts": self.attempts,
            "command": shlex.join(self.command) if self.command else None,
            "devices": self.devices, "started": self.started, "finished": self.finished,
            "shared_node_with": self.shared_node_with, "per_output": self.per_output,
        }


def results_complete(path: Path, point: Point | None = None) -> bool:
    """Whether `path` is a finished run's results.json of `point`'s configuration (its whole
    identity, when given), by the benchmark's own test (`rundir.inspect`): an empty, truncated
    or foreign file, a directory, or results of another configuration are not, so such a point
    is never reported as done."""
    from mlenergy.diffusion.output import rundir

    if point is not None and point.identity is None:
        raise ValueError(f"{point.label()} has no identity yet: plan it first")
    expected = None if point is None else point.identity
    return Path(path).name == RESULTS and rundir.is_complete(Path(path).parent, expected)


def results_path(run_dir: Path) -> Path:
    return Path(run_dir) / RESULTS
