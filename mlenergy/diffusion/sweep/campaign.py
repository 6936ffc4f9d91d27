"""What a campaign keeps on disk beside its runs: the summary of every sweep over one run tree
(merged, never overwritten), the Slurm scripts it emitted or submitted, and their job ids.

- `sweep_summary.json`: the latest sweep's settings, command line, grid and version; its points
  merged with those of earlier sweeps, keyed by run directory, so that a point measured earlier
  keeps its seconds, log and node-sharing record when a later sweep finds it done; and a
  `history` of every earlier sweep (command, times, counts).
- `sweep_logs/slurm/campaign-<time>.sh`: each campaign script `--emit slurm` printed.
- `sweep_logs/slurm/jobs.jsonl`: one line per submitted array (`--submit`, or the emitted
  script when run): time, array name, job id, its script, and its points' run directories.
"""

from __future__ import annotations

import json
import shlex
import time
from datetime import datetime
from pathlib import Path

from mlenergy.diffusion.results import files
from mlenergy.diffusion.sweep import groups
from mlenergy.diffusion.sweep.point import Point, STATUSES

SUMMARY = "sweep_summary.json"
JOBS = "jobs.jsonl"
# Kept from an earlier sweep's record of a point that a later sweep finds already done.
_MEASURED_FIELDS = ("seconds", "log", "attempts", "command", "devices", "started", "finished",
                    "shared_node_with", "measured_by_sweep", "per_output")


def slurm_dir(out_dir: Path) -> Path:
    return Path(out_dir) / "sweep_logs" / "slurm"


def command_line(argv: list[str]) -> str:
    return shlex.join(["mlenergy-diffusion", "sweep", *argv])


def grid_record(grid) -> dict:
    return {"task": grid.task, "models": list(grid.models),
            "batch_sizes": list(grid.batch_sizes),
            "parallel": [f"{u}x{r}" for u, r in grid.parallel],
            "option_sets": [shlex.join(o) for o in grid.option_sets],
            "common_args": list(grid.common_args),
            "model_flags": {m: list(f) for m, f in grid.model_flags.items()
                            if m in grid.models}}


def _key(entry: dict) -> str:
    return entry.get("run_dir") or (f"{entry.get('model_id')} {entry.get('batch_size')} "
                                    f"{entry.get('ulysses_degree')}x{entry.get('ring_degree')} "
                                    f"{entry.get('options')}")


def read_previous(path: Path) -> dict | None:
    """The summary an earlier sweep left, or None (absent or unreadable: then it is kept aside
    by the caller's atomic write, never half-merged)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("points"), list) else None


def merge_points(points: list[Point], previous: dict | None, this_sweep: str) -> list[dict]:
    """This sweep's points, then the earlier sweeps' points it did not touch. A point this sweep
    found already done keeps what the sweep that measured it recorded."""
    earlier = {_key(e): e for e in (previous or {}).get("points", []) if isinstance(e, dict)}
    merged = []
    for point in points:
        entry = point.to_json()
        old = earlier.pop(_key(entry), None)
        if point.status in ("done", "failed", "interrupted"):
            entry["measured_by_sweep"] = this_sweep
        elif point.status == "already_done" and old and old.get("status") in ("done",
                                                                               "already_done"):
            entry.update({k: old[k] for k in _MEASURED_FIELDS if k in old})
        merged.append(entry)
    return merged + list(earlier.values())


def history(previous: dict | None) -> list[dict]:
    """The earlier sweeps over this tree, oldest first."""
    if previous is None:
        return []
    past = [h for h in previous.get("history", []) if isinstance(h, dict)]
    last = {k: previous.get(k) for k in ("started", "finished", "command", "version",
                                         "stopped_by", "counts")}
    return past + [last]


def write_emitted_script(out_dir: Path, script: str) -> Path:
    """Keep a copy of an emitted campaign script; returns its path."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = slurm_dir(out_dir) / f"campaign-{stamp}.sh"
    suffix = 1
    while path.exists():
        suffix += 1
        path = slurm_dir(out_dir) / f"campaign-{stamp}-{suffix}.sh"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    return path


def record_submission(out_dir: Path, array_name: str, job_id: str, script: str,
                      run_dirs: list[str]) -> Path:
    """Keep the script of a submitted array and append its job id to jobs.jsonl."""
    directory = slurm_dir(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    script_path = directory / f"{array_name}-{job_id}.sbatch"
    script_path.write_text(script)
    line = json.dumps({"submitted": datetime.now().isoformat(timespec="seconds"),
                       "unix_time": time.time(), "array": array_name, "job_id": job_id,
                       "script": str(script_path), "run_dirs": run_dirs})
    with open(directory / JOBS, "a", encoding="utf-8") as f:
        f.write(line + "\n")
    return script_path


def write_summary(path: Path, header: dict, points: list[Point], tally: dict,
                  previous: dict | None) -> None:
    """`previous`: the summary as it was before this sweep began (read once, at its start)."""
    files.write_json_atomically(path, {
        **header, "counts": tally,
        "points": merge_points(points, previous, header["started"]),
        "history": history(previous)})


# -- what the console says of a sweep ------------------------------------------------------

def dry_run_totals(points: list[Point], one_point_per_process: bool = False) -> str:
    """One line: how many points would run, in how many launches of how many processes."""
    pending = [p for p in points if p.status == "pending"]
    launches = groups.make_groups(points, one_point_per_process)
    tally = counts(points)
    rest = ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in tally.items() if n)
    return (f"{len(pending)} point(s) to run in {len(launches)} launch(es) "
            f"({sum(g.nproc for g in launches)} GPU processes in all)"
            + (f"; {rest}" if rest else ""))


def counts(points: list[Point]) -> dict[str, int]:
    """How many points ended in each status."""
    return {s: sum(p.status == s for p in points) for s in STATUSES}


def print_summary(points: list[Point], summary_path: Path, gpu_time: dict | None = None) -> None:
    print("\nSweep summary")
    for p in points:
        extra = f": {p.reason}" if p.reason and p.status != "already_done" else ""
        log = f" (log: {p.log})" if p.status == "failed" else ""
        print(f"  {p.status:<12} {p.label()}{extra}{log}")
    tally = counts(points)
    print("  " + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in tally.items()))
    if gpu_time and gpu_time["launches"]:
        share = gpu_time["measured_share"]
        print(f"  GPU time: {gpu_time['booked_gpu_s']:,.1f} s booked by "
              f"{gpu_time['launches']} launch(es), {gpu_time['measured_gpu_s']:,.1f} s inside "
              f"measured windows" + (f" ({share:.0%})" if share is not None else ""))
    print(f"  summary: {summary_path}")
