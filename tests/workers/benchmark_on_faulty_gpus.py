"""The benchmark on scripted GPUs (probes/fake.py), plus a fault the script format has no word
for: GUARDS_DROP_GPU=WINDOW:INDEX makes this node's energy window WINDOW (e.g. iteration-1) come
back without its local GPU INDEX, as a reading that lacks some of the node's GPUs would."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlenergy.diffusion.probes import fake  # noqa: E402

_end = fake._Windows.end


def _end_dropping_a_gpu(self, name):
    reading = _end(self, name)
    window, _, index = os.environ.get("GUARDS_DROP_GPU", "").partition(":")
    if name == window:
        reading.gpu_energy.pop(int(index))
    return reading


fake._Windows.end = _end_dropping_a_gpu

from mlenergy.diffusion import benchmark  # noqa: E402

if __name__ == "__main__":
    sys.exit(benchmark.main())
