"""Draw (or redraw) a run's power plot from its results.json, e.g. on a machine with matplotlib
when the GPU host had none:  python scripts/plot_timeline.py RUN_DIR [OUT.png]"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlenergy.diffusion import power_plot  # noqa: E402


def main(argv: list[str]) -> int:
    if not argv or len(argv) > 2:
        print("usage: python scripts/plot_timeline.py RUN_DIR [OUT.png]", file=sys.stderr)
        return 2
    run_dir = Path(argv[0])
    doc = json.loads((run_dir / "results.json").read_text())
    out = Path(argv[1]) if len(argv) == 2 else run_dir / power_plot.PLOT
    if not (doc.get("timeline") or {}).get("power"):
        print(f"error: {run_dir}/results.json has no power timeline (a CPU run?)", file=sys.stderr)
        return 1
    power_plot.plot_power(doc["timeline"],
                          [(it["start_time"], it["end_time"]) for it in doc["iterations"]],
                          [tuple(b) for it in doc["iterations"] for b in it.get("stage_boundaries", [])],
                          out, title=f"{doc['model_id']} {doc.get('gpu_model')}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
