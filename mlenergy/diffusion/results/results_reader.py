"""results.json read back: the one module that parses it, for every tool (report, check,
quality, the run directory's test of done, the sweep, the scripts).

    stored = RunResults.load(path)     # a run directory, or its results.json
    stored.energy_per_output, stored.task, stored.self_checks["timeline"].passed

Callers read attributes, never the document's keys: what older results lack (no `task`, no
`run_identity`, no `ci95`, degrees only under `configurations`, no self-check verdict) is filled
in here, once. A file this benchmark did not write (another JSON document, a damaged or
truncated file) is refused with `ResultsError`, whose message is one line; `find_results` and
`run_dirs` find the runs of a tree the same way for every tool.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from mlenergy.diffusion.inputs.task import TASKS, task_with_frames
from mlenergy.diffusion.results.files import RESULTS
from mlenergy.diffusion.results.results_sections import (
    EnergyWindow, Exclusivity, Gpu, HostEnergy, IdleBaseline, Iteration, PhysicalFloor, SelfCheck,
    StageTotals, Steadiness, Summary, Timeline, finite, section,
)

# Where the run records every setting that changes its numbers (rundir.identity).
IDENTITY_KEY = "run_identity"


class ResultsError(ValueError):
    """A results.json that is missing, unreadable, or not one this benchmark wrote."""


def _recorded(key: str, meaning: str | None = None) -> property:
    """A property that reads `key` as the run recorded it (None when absent)."""
    return property(lambda self: self.doc.get(key), doc=meaning)


def _read_object(path: Path) -> dict:
    """The JSON object in `path`: the only place results.json is parsed."""
    if not path.is_file():
        raise ResultsError(f"{RESULTS} is missing")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ResultsError(f"cannot read it ({err.strerror or err})") from None
    except ValueError as err:  # UnicodeDecodeError included
        raise ResultsError(f"not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ResultsError(f"a JSON {type(doc).__name__}, not an object")
    return doc


@dataclasses.dataclass(frozen=True)
class RunResults:
    """One run's results.json as read back: where it lies, and what it says as attributes.
    `doc` is the document as written, for rewriting it (`quality --write`) and for the blocks
    only the GPU scripts look into (`section`)."""

    path: Path
    doc: dict

    @classmethod
    def load(cls, path: Path) -> RunResults:
        """The results.json of a run directory (or that file itself), checked to be this
        benchmark's: a JSON object with a model id and a positive integer batch size."""
        path = Path(path)
        if path.is_dir():
            path = path / RESULTS
        doc = _read_object(path)
        if not isinstance(doc.get("model_id"), str) or "batch_size" not in doc:
            raise ResultsError("no model_id or batch_size: not a results.json of this benchmark")
        batch = doc["batch_size"]
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ResultsError(f"batch_size {batch!r} is not a positive integer")
        return cls(path=path, doc=doc)

    def section(self, name: str) -> dict:
        """A block as written, empty when absent: for the blocks that no attribute here types
        because only a GPU script looks into them (`compile`, `attention`, `quality`, ...)."""
        block = self.doc.get(name)
        return block if isinstance(block, dict) else {}

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    # -- what was run ------------------------------------------------------------------------

    @property
    def model_id(self) -> str:
        return self.doc["model_id"]

    @property
    def batch_size(self) -> int:
        return self.doc["batch_size"]

    @property
    def task(self) -> str:
        """`task` as recorded; for results written before it was, from the run tree's layout
        (`.../diffusion/<task>/...`) or the presence of a frame count."""
        if self.doc.get("task"):
            return self.doc["task"]
        parts = self.path.parts
        for i, part in enumerate(parts[:-1]):
            if part == "diffusion" and parts[i + 1] in TASKS:
                return parts[i + 1]
        return task_with_frames(self.doc.get("num_frames")).name

    @property
    def unit(self) -> str:
        """What one output is: "video" when the results carry the video keys, else "image"."""
        return "video" if "avg_time_per_video" in self.doc else "image"

    @property
    def configurations(self) -> dict:
        """The options as recorded (`configurations`); empty when absent."""
        return self.section("configurations")

    @property
    def ulysses_degree(self) -> int:
        # Older results record the degrees only inside `configurations`.
        return int(self.doc.get("ulysses_degree") or self.configurations.get("ulysses_degree")
                   or 1)

    @property
    def ring_degree(self) -> int:
        return int(self.doc.get("ring_degree") or self.configurations.get("ring_degree") or 1)

    @property
    def num_gpus(self) -> int:
        """GPUs measured (0 on a CPU); one per process for results that do not say."""
        recorded = self.doc.get("num_gpus")
        return int(recorded) if recorded is not None else self.ulysses_degree * self.ring_degree

    @property
    def num_processes(self) -> int:
        return int(self.doc.get("num_processes") or self.ulysses_degree * self.ring_degree)

    gpu_model = _recorded("gpu_model", "The GPUs' name; on a CPU the processor's.")
    weights = _recorded("weights", "pretrained | random | tiny; None in older results.")
    dtype = _recorded("dtype")
    date = _recorded("date")
    seed = _recorded("seed")
    height = _recorded("height")
    width = _recorded("width")
    num_frames = _recorded("num_frames")
    fps = _recorded("fps")
    inference_steps = _recorded("inference_steps")
    num_iterations = _recorded("num_iterations")
    total_images = _recorded("total_images", "Outputs saved (images or videos).")
    total_time = _recorded("total_time", "Seconds of the measured iterations.")
    stage_fence = _recorded("stage_fence")

    # -- what was measured -------------------------------------------------------------------

    @property
    def time_per_output(self) -> float | None:
        return self.doc.get(f"avg_time_per_{self.unit}")

    @property
    def energy_per_output(self) -> float | None:
        """Joules per image or video; None when energy was not measured (never 0)."""
        return self.doc.get(f"energy_per_{self.unit}")

    @property
    def peak_memory_gb(self) -> float | None:
        return finite(self.doc.get("peak_memory_gb"))

    @property
    def warmup_iteration_times(self) -> list[float]:
        return list(self.doc.get("warmup_iteration_times") or [])

    @property
    def iterations(self) -> list[Iteration]:
        found = self.doc.get("iterations")
        return ([Iteration.from_json(it) for it in found if isinstance(it, dict)]
                if isinstance(found, list) else [])

    @property
    def energy_windows(self) -> list[EnergyWindow]:
        """`iteration_energy_measurements`; empty when energy was not measured."""
        found = self.doc.get("iteration_energy_measurements") or []
        return [section(EnergyWindow, w) for w in found if isinstance(w, dict)]

    def _summary(self, name: str) -> Summary | None:
        return section(Summary, self.doc.get(name))

    @property
    def latency_per_iteration(self) -> Summary | None:
        return self._summary("latency_per_iteration")

    @property
    def energy_per_iteration(self) -> Summary | None:
        return self._summary("energy_per_iteration")

    @property
    def latency_per_image(self) -> Summary | None:
        return self._summary("latency_per_image_stats")

    @property
    def energy_per_image(self) -> Summary | None:
        return self._summary("energy_per_image_stats")

    @property
    def steps(self) -> Summary | None:
        """Per-step latencies of the denoising loop."""
        return self._summary("steps")

    @property
    def steadiness(self) -> Steadiness | None:
        return section(Steadiness, self.doc.get("steadiness"))

    @property
    def stage_breakdown(self) -> dict[str, StageTotals] | None:
        """Stage name -> mean time and energy per iteration; None when not recorded."""
        found = self.doc.get("stage_breakdown")
        if not isinstance(found, dict):
            return None
        return {name: section(StageTotals, totals) or StageTotals()
                for name, totals in found.items()}

    @property
    def physical_floor(self) -> PhysicalFloor | None:
        return section(PhysicalFloor, self.doc.get("physical_floor"))

    @property
    def timeline(self) -> Timeline | None:
        return section(Timeline, self.doc.get("timeline"))

    @property
    def idle_baseline(self) -> IdleBaseline | None:
        return section(IdleBaseline, self.doc.get("idle_baseline"))

    @property
    def self_checks(self) -> dict[str, SelfCheck]:
        """`energy_cross_check` by name (timeline, nvml); a check the run could not make (no
        GPU, no timeline) is absent."""
        return {name: section(SelfCheck, check)
                for name, check in self.section("energy_cross_check").items()
                if isinstance(check, dict)}

    @property
    def exclusivity(self) -> Exclusivity | None:
        return section(Exclusivity, self.doc.get("gpu_exclusivity"))

    @property
    def host_energy(self) -> HostEnergy | None:
        return section(HostEnergy, self.doc.get("host_energy"))

    @property
    def gpus(self) -> list[Gpu]:
        found = self.section("environment").get("gpus") or []
        return [section(Gpu, gpu) or Gpu() for gpu in found]

    @property
    def shared_node_runs(self) -> list[dict] | None:
        """The campaign's other runs on the node during this one; None: not recorded."""
        found = self.doc.get("shared_node_runs")
        return found if isinstance(found, list) else None

    # -- the run directory's test of done ----------------------------------------------------

    @property
    def incomplete_reason(self) -> str | None:
        """Why these results are not a finished run (an interrupted write, a failed run); None
        when they hold every measured iteration and a positive total time."""
        iterations, count = self.doc.get("iterations"), self.doc.get("num_iterations")
        if not isinstance(count, int) or count < 1 or not isinstance(iterations, list) \
                or len(iterations) != count:
            return "does not hold its measured iterations"
        total = finite(self.total_time)
        if total is None or total <= 0:
            return "has no positive total_time"
        return None

    @property
    def identity(self) -> tuple[dict, bool]:
        """(settings that identify the run, whether they are all of them): `run_identity` as
        recorded; for results written before it existed, the few settings they carry."""
        recorded = self.doc.get(IDENTITY_KEY)
        if isinstance(recorded, dict):
            return recorded, True
        doc, conf = self.doc, self.configurations
        return ({"model_id": doc.get("model_id"), "batch_size": doc.get("batch_size"),
                 "height": doc.get("height"), "width": doc.get("width"),
                 "inference_steps": doc.get("inference_steps"), "seed": doc.get("seed"),
                 "benchmark_iters": doc.get("num_iterations"),
                 **{k: conf[k] for k in ("ulysses_degree", "ring_degree", "use_torch_compile",
                                         "warmup_iters") if k in conf}}, False)


def find_results(root: Path) -> list[Path]:
    """Every results.json under `root`. Directory links are followed (the toolkit's layout
    reaches runs through a `current/run` link) but each directory is visited once, so a link
    loop or a second link to the same tree does not count its runs again."""
    found, visited = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames
                             if os.path.realpath(os.path.join(dirpath, d)) not in visited)
        if RESULTS in filenames:
            found.append(Path(dirpath) / RESULTS)
    return sorted(found)


def run_dirs(path: Path) -> list[Path]:
    """The run directories `path` names: itself when it holds a results.json, else every
    directory under it that holds one (a run tree); empty when there is none."""
    path = Path(path)
    if (path / RESULTS).is_file():
        return [path]
    return [found.parent for found in find_results(path)] if path.is_dir() else []
