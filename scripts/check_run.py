"""Check that benchmark run directories are complete and carry a real GPU energy measurement.

    python scripts/check_run.py RUN_DIR [RUN_DIR ...]

Kept for existing scripts: the check is `mlenergy-diffusion check RUN_DIR ...`
(mlenergy/diffusion/tools/check_runs.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mlenergy.diffusion.tools import check_runs as checks  # noqa: E402

if __name__ == "__main__":
    sys.exit(checks.main(sys.argv[1:]))
