"""Check that benchmark run directories are complete and carry a real GPU energy measurement.

    python scripts/check_run.py RUN_DIR [RUN_DIR ...]

Exits non-zero, naming the run and the problem, when any file is missing, energy per image is
not a finite positive number, or the GPU name or power limit was not recorded.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path


def problems(run_dir: Path) -> list[str]:
    found = []
    for name in ("results.json", "requests.json", "driver_log.txt"):
        if not (run_dir / name).is_file():
            found.append(f"{name} is missing")
    if found:
        return found
    doc = json.loads((run_dir / "results.json").read_text())
    outputs = run_dir / ("video_outputs" if doc.get("task") == "text-to-video" else "image_outputs")
    expected = doc["total_images"]
    saved = [p for p in outputs.iterdir()] if outputs.is_dir() else []
    if len(saved) != expected:
        found.append(f"{outputs.name} holds {len(saved)} files, expected {expected}")
    for it in doc["iterations"]:
        for image in it["images"]:
            if not (run_dir / image).is_file():
                found.append(f"{image} listed but missing")
    energy = doc.get("energy_per_image")
    if not isinstance(energy, (int, float)) or not math.isfinite(energy) or energy <= 0:
        found.append(f"energy per image is {energy!r}: energy was not measured")
    if not doc.get("iteration_energy_measurements"):
        found.append("iteration_energy_measurements is missing")
    gpus = doc.get("environment", {}).get("gpus") or []
    if not gpus or not all(g.get("name") for g in gpus):
        found.append("GPU name not recorded")
    if not gpus or not all((g.get("power_limit_w") or 0) > 0 for g in gpus):
        found.append("GPU power limit not recorded")
    return found


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    failed = False
    for arg in argv:
        run_dir = Path(arg)
        issues = problems(run_dir)
        if issues:
            failed = True
            for issue in issues:
                print(f"FAIL {run_dir}: {issue}", file=sys.stderr)
        else:
            doc = json.loads((run_dir / "results.json").read_text())
            print(f"ok   {run_dir}: {doc['avg_time_per_image']:.3f} s/image, "
                  f"{doc['energy_per_image']:.1f} J/image on {doc['gpu_model']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
