"""Several points measured by one process: the command line's `--then`, and what the points of one
process must share.

    benchmark.py [flags] workload:t2i --workload.batch_size 1 \\
        --then [flags] workload:t2i --workload.batch_size 2

Each point is a whole command line of its own, planned and named exactly as if it were launched
alone. The process loads the pipeline once, for the first point, so every point must want the
same pipeline: only the settings that a pipeline call takes (batch size, seed, iteration counts,
prompts) and what is done with its outputs may differ. No torch here: the sweep imports it.
"""

from __future__ import annotations

from pathlib import Path

THEN = "--then"

# Identity fields that may differ between the points of one process: each is an argument of a
# pipeline call or a choice about the call's outputs, never part of the loaded pipeline.
PER_CALL_FIELDS = frozenset({
    "batch_size", "seed", "warmup_iters", "warmup_steps", "benchmark_iters", "prompts",
    "count_flops", "profile_steps", "save_images", "reference_run",
})


class GroupError(ValueError):
    """Points that one process cannot measure together; the message is one line."""


def split_points(argv: list[str]) -> list[list[str]]:
    """The command line's points: the arguments between `--then`s."""
    points: list[list[str]] = [[]]
    for arg in argv:
        if arg == THEN:
            points.append([])
        else:
            points[-1].append(arg)
    if len(points) > 1 and not all(points):
        raise GroupError(f"{THEN} needs a whole benchmark command line on each side (flags and "
                         "workload:...); found an empty one")
    return points


def join_points(argvs: list[list[str]]) -> list[str]:
    """One command line measuring every point of `argvs` in one process."""
    joined: list[str] = []
    for i, argv in enumerate(argvs):
        joined += ([THEN] if i else []) + list(argv)
    return joined


def pipeline_key(identity: dict) -> dict:
    """What of a point's identity (`rundir.identity`) its pipeline depends on."""
    return {k: v for k, v in identity.items() if k not in PER_CALL_FIELDS}


def check_one_pipeline(run_dirs: list[Path], identities: list[dict]) -> None:
    """Refuse points that cannot share one loaded pipeline, or one run directory."""
    first = pipeline_key(identities[0])
    seen: dict[Path, int] = {}
    for number, (run_dir, ident) in enumerate(zip(run_dirs, identities), start=1):
        if run_dir in seen:
            raise GroupError(f"points {seen[run_dir]} and {number} of this command line name the "
                             f"same run directory {run_dir}; give them different settings")
        seen[run_dir] = number
        key = pipeline_key(ident)
        differing = next((k for k in first if key.get(k) != first[k]), None)
        if differing is not None:
            raise GroupError(
                f"point {number} has {differing}={key.get(differing)!r} but point 1 has "
                f"{first[differing]!r}: the points joined by {THEN} share one pipeline, so only "
                f"{', '.join(sorted(PER_CALL_FIELDS))} may differ; launch it separately")
