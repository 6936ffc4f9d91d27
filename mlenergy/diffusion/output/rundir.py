"""The run directory: what identifies a run, when an existing one counts as done, and who may
write it.

- Identity: the directory name keeps the ML.ENERGY prefix (`batch-..+size-..+steps-..+seed-..+
  uly-..+ring-..+tc-..`, then off-default tokens), and results.json stores `run_identity`, every
  setting that changes the numbers. A rerun compares the two: equal means done, different is
  refused in one line (or replaced with --overwrite_results).
- Done: only a complete, parseable results.json whose identity is this run's. Anything else in
  the directory is the leftover of an interrupted or failed run, and is moved aside before
  measuring again.
- Moving aside: into `<base_dir>/.superseded/<name>@<time>/`, with its results.json renamed so
  that no reader takes it for a current result. --overwrite_results moves the old run aside
  before anything new is written, so a failing rerun never leaves old results beside new files.
- Lock: `<base_dir>/.<name>.lock`, created exclusively by rank 0 before anything is written and
  holding its PID, host and process start time; a second run is refused in one line. It is
  released on every exit that can run code, and a lock whose holder is gone (same host: PID
  dead or reused; another host: no heartbeat for MLENERGY_LOCK_STALE_S) is taken over with a
  warning that names it.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

from mlenergy.diffusion.output.runlock import RunDirLock, config_error as _config_error
from mlenergy.diffusion.results.files import RESULTS
from mlenergy.diffusion.results.results_reader import IDENTITY_KEY, ResultsError, RunResults

__all__ = ["RunDirLock", "Claim", "Existing", "claim", "identity", "inspect", "is_complete",
           "existing_run", "move_aside"]

SUPERSEDED_DIR = ".superseded"
SUPERSEDED_RESULTS = "results.superseded.json"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _prompt_identity(plan) -> dict:
    """Which prompts the run measures: their source (a file by path and content; a dataset by
    id or path, split and column), the sampling rule, and how many are drawn."""
    from mlenergy.diffusion.planning import prompts

    source = plan.prompts
    count = plan.batch_size * (plan.warmup_iters + plan.benchmark_iters)
    if source.prompts_file is not None:
        path = Path(source.prompts_file)
        where = {"file": str(path.resolve()), "sha256": _file_digest(path)}
    else:
        dataset = source.prompt_dataset
        local = Path(dataset)
        split, column = prompts.DATASET_SPLITS.get(
            dataset, ("train", plan.task.prompt_column))
        where = {"dataset": str(local.resolve()) if local.exists() else dataset,
                 "split": split, "column": column}
    return {**where, "sampling": source.prompt_sampling, "count": count}


def identity(plan) -> dict:
    """Every setting of `plan` that changes what is measured, as JSON values. Local models and
    prompt files are named by absolute path (and the prompts by content), so two folders of the
    same name are two runs."""
    # What from_pretrained loads: a local directory is recorded as local/<folder> (or the name
    # given), so only its path tells two folders of the same name apart.
    model_path = Path(plan.spec.load_id)
    return {
        "model_id": plan.spec.model_id,
        "model_path": str(model_path.resolve()) if model_path.is_absolute() else None,
        "revision": plan.spec.revision, "variant": plan.spec.variant,
        "family": plan.spec.family_name,
        "scheduler_overrides": dict(plan.spec.scheduler_overrides),
        "task": plan.task.name, "weights": plan.weights, "dtype": plan.dtype,
        "batch_size": plan.batch_size, "height": plan.height, "width": plan.width,
        "inference_steps": plan.inference_steps, "guidance_scale": plan.guidance_scale,
        "seed": plan.seed, "num_frames": plan.num_frames, "fps": plan.fps,
        "max_sequence_length": plan.max_sequence_length,
        "ulysses_degree": plan.ulysses_degree, "ring_degree": plan.ring_degree,
        "world_size": plan.world_size, "device_type": plan.device_type,
        **plan.options.configurations(),
        "warmup_iters": plan.warmup_iters, "warmup_steps": plan.warmup_steps,
        "benchmark_iters": plan.benchmark_iters,
        "prompts": _prompt_identity(plan),
        "count_flops": plan.count_flops, "profile_steps": plan.profile_steps,
        "save_images": plan.save_images,
        "idle_baseline_s": plan.idle_baseline_s,
        "reference_run": (str(Path(plan.reference_run).resolve())
                          if plan.reference_run is not None else None),
    }


@dataclass(frozen=True)
class Existing:
    """What a run directory holds. state: absent | done | other (complete results of another
    configuration) | incomplete (anything else: an interrupted or failed run, damaged files)."""

    state: str
    detail: str


def _first_difference(stored: dict, expected: dict, partial: bool) -> str | None:
    """The first setting that differs, as `key <stored>, not <expected>`; with `partial`, only
    the keys `stored` records are compared."""
    for key, value in expected.items():
        if key not in stored:
            if partial:
                continue
            return f"{key} not recorded, this run's {json.dumps(value)}"
        if isinstance(value, dict) and isinstance(stored[key], dict):
            inner = _first_difference(stored[key], value, partial)
            if inner is None and set(stored[key]) - set(value):
                extra = sorted(set(stored[key]) - set(value))[0]
                inner = f"{extra} {json.dumps(stored[key][extra])}, not recorded by this run"
            if inner is not None:
                return f"{key}.{inner}"
        elif stored[key] != value:
            return f"{key} {json.dumps(stored[key])}, not {json.dumps(value)}"
    return None


def per_output(run_dir: Path) -> dict | None:
    """A complete run's headline: seconds and joules (None when not measured) per image or
    video; None when the results cannot be read."""
    try:
        stored = RunResults.load(run_dir)
    except ResultsError:
        return None
    return {"unit": stored.unit, "seconds": stored.time_per_output,
            "joules": stored.energy_per_output,
            # The measured iterations' time: what a campaign's GPU time is booked for.
            "measured_s": stored.total_time}


def inspect(run_dir: Path, expected: dict | None = None) -> Existing:
    """Classify what `run_dir` holds against the identity `expected` (None: any complete
    results count as done)."""
    run_dir = Path(run_dir)
    results = run_dir / RESULTS
    if not run_dir.exists() and not run_dir.is_symlink():
        return Existing("absent", f"{run_dir} does not exist")
    if not run_dir.is_dir():
        return Existing("incomplete", f"{run_dir} is not a directory")
    if not results.exists() and not results.is_symlink():
        if not any(run_dir.iterdir()):
            return Existing("absent", f"{run_dir} is empty")
        return Existing("incomplete", f"{run_dir} holds no {RESULTS} (an interrupted or "
                                      "failed run)")
    if not results.is_file():
        return Existing("incomplete", f"{results} is not a file")
    try:
        stored = RunResults.load(results)
    except ResultsError as err:
        return Existing("incomplete", f"{results} is not a finished run's results: {err}")
    reason = stored.incomplete_reason
    if reason is not None:
        return Existing("incomplete", f"{results} {reason}")
    if expected is None:
        return Existing("done", f"{results} is complete")
    # Results written before `run_identity` carry a few settings: only those are compared.
    recorded, whole = stored.identity
    difference = _first_difference(recorded, expected, partial=not whole)
    if difference is not None:
        return Existing("other", f"{results} was measured with {difference}")
    return Existing("done", f"{results} holds this configuration")


def existing_run(plan) -> Existing:
    """What `plan`'s run directory holds, judged against the plan's whole identity: the one test
    of done that the benchmark, the local sweep and the Slurm task share."""
    return inspect(plan.run_dir, identity(plan))


def is_complete(run_dir: Path, expected: dict | None = None) -> bool:
    """True only when `run_dir` holds a complete results.json of the identity `expected`
    (`identity(plan)`); None accepts any complete results. For the sweep."""
    return inspect(run_dir, expected).state == "done"


def move_aside(run_dir: Path) -> Path:
    """Move `run_dir` to `<base>/.superseded/<name>@<time>/`, its results.json renamed."""
    run_dir = Path(run_dir)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    parking = run_dir.parent / SUPERSEDED_DIR
    parking.mkdir(exist_ok=True)
    target = parking / f"{run_dir.name}@{stamp}"
    suffix = 1
    while target.exists():
        suffix += 1
        target = parking / f"{run_dir.name}@{stamp}-{suffix}"
    os.rename(run_dir, target)
    if target.is_dir() and ((target / RESULTS).exists() or (target / RESULTS).is_symlink()):
        os.rename(target / RESULTS, target / SUPERSEDED_RESULTS)
    return target


@dataclass
class Claim:
    """Rank 0's hold on the run directory, and what every rank does about what it holds."""

    run_dir: Path
    verdict: str  # measure | skip
    message: str | None = None
    lock: RunDirLock | None = None
    leftovers: bool = False
    created: list[Path] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.verdict == "skip"

    def clear(self) -> Path | None:
        """Before the run writes anything (rank 0): move what the directory holds aside.
        Returns where it went."""
        if self.lock is None or not self.leftovers:
            return None
        self.leftovers = False
        return move_aside(self.run_dir)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
        # A run that wrote nothing leaves no empty base directory behind.
        for folder in reversed(self.created):
            try:
                folder.rmdir()
            except OSError:
                break


def _missing_parents(path: Path) -> list[Path]:
    missing = []
    for folder in [path, *path.parents]:
        if folder.exists():
            break
        missing.append(folder)
    return list(reversed(missing))


def _decide(plan, overwrite: bool) -> tuple[str, str | None, bool]:
    """(verdict, message, leftovers) for rank 0, holding the lock."""
    existing = existing_run(plan)
    if existing.state == "absent":
        return "measure", None, False
    if overwrite:
        return "measure", f"--overwrite_results: {existing.detail}; moving it aside", True
    if existing.state == "done":
        return "skip", (f"{plan.run_dir / RESULTS} already exists and holds this "
                        "configuration; skipping this run (pass --overwrite_results to "
                        "measure it again)"), False
    if existing.state == "other":
        return "refuse", (f"{existing.detail}: another configuration in the same run "
                          "directory; pass --overwrite_results to replace it, or another "
                          "--workload.base_dir"), False
    return "measure", f"{existing.detail}; moving it aside and measuring again", True


def claim(plan, is_main: bool, broadcast: Callable = lambda value: value) -> Claim:
    """Take the run directory on rank 0 (lock, then look at what it holds) and tell every rank
    through `broadcast` whether to measure or skip. Raises ConfigError (every rank) when the
    directory is busy or holds another configuration. The lock goes at exit."""
    decision = None
    lock = None
    created: list[Path] = []
    if is_main:
        lock = RunDirLock(plan.run_dir)
        created = _missing_parents(plan.run_dir.parent)
        try:
            lock.acquire()
            decision = _decide(plan, plan.overwrite_results)
        except ValueError as err:
            decision = ("refuse", str(err), False)
    verdict, message, leftovers = broadcast(decision)
    result = Claim(plan.run_dir, verdict, message, lock, leftovers, created)
    if verdict != "measure":
        result.release()
    elif is_main:
        atexit.register(result.release)
    if verdict == "refuse":
        raise _config_error(message)
    if is_main and message is not None:
        print(message, flush=True)
    return result
