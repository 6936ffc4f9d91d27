"""Print a GPU run's measurement (stage split, steps, floor, checks) and fail when a part that a
GPU run must have is missing.

    python scripts/check_measurement.py RUN_DIR

Kept for existing scripts: the check is `mlenergy-diffusion check --measurement RUN_DIR`
(mlenergy/diffusion/tools/check_runs.py), which also checks that the run is complete.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlenergy.diffusion.tools import check_runs as checks  # noqa: E402

if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python scripts/check_measurement.py RUN_DIR", file=sys.stderr)
        sys.exit(2)
    sys.exit(checks.check_runs([Path(sys.argv[1])], completeness=False, measurement=True))
