"""Draw (or redraw) a run's power plot from its results.json, e.g. on a machine with matplotlib
when the GPU host had none:  python scripts/plot_timeline.py RUN_DIR [OUT.png]"""

import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlenergy.diffusion.output import power_plot  # noqa: E402
from mlenergy.diffusion.results.results_reader import ResultsError, RunResults  # noqa: E402


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print("usage: python scripts/plot_timeline.py RUN_DIR [OUT.png]", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    try:
        stored = RunResults.load(run_dir)
    except ResultsError as err:
        print(f"error: {run_dir}/results.json: {err}", file=sys.stderr)
        return 1
    out = Path(argv[1]) if len(argv) == 2 else run_dir / power_plot.PLOT
    if stored.timeline is None or not stored.timeline.power:
        print(f"error: {run_dir}/results.json has no power timeline (a CPU run?)", file=sys.stderr)
        return 1
    iterations = stored.iterations
    power_plot.plot_power(dataclasses.asdict(stored.timeline),
                          [(it.start_time, it.end_time) for it in iterations],
                          [b for it in iterations for b in it.stage_boundaries],
                          out, title=f"{stored.model_id} {stored.gpu_model}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
