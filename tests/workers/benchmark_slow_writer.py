"""The benchmark under torchrun, except that rank 0 takes `SLOW_WRITER_S` seconds longer to
write its results (as a slow file system, a first matplotlib import or a long analysis would):
the other ranks must not fail the run meanwhile."""

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlenergy.diffusion import benchmark  # noqa: E402

_write_results = benchmark._write_results


def _slowly(*args):
    _write_results(*args)
    time.sleep(float(os.environ["SLOW_WRITER_S"]))


benchmark._write_results = _slowly

if __name__ == "__main__":
    sys.exit(benchmark.main())
