"""The benchmark, as `python -m mlenergy.diffusion.benchmark` or under torchrun, except that
every video is also kept as its frames before H.264 coding (`<name>.mp4.npy`, float32 0-255):
lossy coding can spread a one-level rounding difference over many pixels, so outputs of two
runs are compared here, where an exact comparison means something."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import diffusers.utils  # noqa: E402
import numpy as np  # noqa: E402

_export_to_video = diffusers.utils.export_to_video


def _keeping_frames(frames, path, *args, **kwargs):
    np.save(f"{path}.npy", np.stack([np.asarray(f, dtype=np.float32) for f in frames]))
    return _export_to_video(frames, path, *args, **kwargs)


diffusers.utils.export_to_video = _keeping_frames

from mlenergy.diffusion import benchmark  # noqa: E402

if __name__ == "__main__":
    sys.exit(benchmark.main())
