"""Run a grid of benchmark points and survive the ones that fail: here, one at a time or packed
on disjoint GPUs, or as Slurm job arrays.

    python -m mlenergy.diffusion.sweep --models M... --batch_sizes B... --parallel UxR... \
        [--options=FLAGS]... [--pack] [-- BENCHMARK FLAGS FOR EVERY POINT]
    python -m mlenergy.diffusion.sweep --preset leaderboard --submit -- --workload.weights random

Modules: `grid` (the points, validated by the benchmark's own parser and planner), `local` (the
runner on this node), `process` (a point's whole process tree), `slurm` (job arrays), `task` (one
array task), `sharing` (which runs shared a node), `cli`. Kept free of heavy imports: the
benchmark and every Slurm task import parts of this package.
"""

from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    from mlenergy.diffusion.sweep.command_line import main as cli_main

    return cli_main(argv)
