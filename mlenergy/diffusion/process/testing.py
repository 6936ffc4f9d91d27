"""Hooks the test suite uses to watch a run or make it fail on purpose. Inactive unless their
variable is set; they wrap the pipeline once it is built, so the measured loop carries no test
code.

- MLENERGY_FAIL_RANK=R: rank R raises at its first measured iteration; `R@B`: only in the
  point of batch size B (of a process measuring several).
- MLENERGY_HANG_RANK=R: rank R goes silent (alive, sleeping, its connections open) instead of
  making its first measured call, so the other ranks wait inside xDiT's collectives;
  `R:after_call`: once that call has returned, so they wait at the window's closing fence;
  `R@B`: only in the point of batch size B.
- MLENERGY_RECORD_CALLS=<file>: every rank appends one JSON line per pipeline call, return and
  saved image (rank, time, seed, prompts, steps), in the shape of the scripted GPUs' event log
  (probes/fake.py), so that one file can hold both and show the order of a run's events.
"""

from __future__ import annotations

import json
import os
import sys
import time

FAIL_RANK_ENV = "MLENERGY_FAIL_RANK"
HANG_RANK_ENV = "MLENERGY_HANG_RANK"
RECORD_CALLS_ENV = "MLENERGY_RECORD_CALLS"


class _Wrapped:
    def __init__(self, pipeline):
        self._pipeline = pipeline

    def __getattr__(self, name):
        return getattr(self._pipeline, name)


class _FailingPipeline(_Wrapped):
    """The pipeline, except that call number `fail_at` (0-based) raises."""

    def __init__(self, pipeline, fail_at: int, rank: int):
        super().__init__(pipeline)
        self._fail_at = fail_at
        self._rank = rank
        self._calls = 0

    def __call__(self, *args, **kwargs):
        call, self._calls = self._calls, self._calls + 1
        if call == self._fail_at:
            raise RuntimeError(f"failure injected on rank {self._rank} by {FAIL_RANK_ENV}")
        return self._pipeline(*args, **kwargs)


class _HangingPipeline(_Wrapped):
    """The pipeline, except that at call number `hang_at` this rank stops answering: before the
    call, or after it when `after_call`."""

    def __init__(self, pipeline, hang_at: int, rank: int, after_call: bool):
        super().__init__(pipeline)
        self._hang_at = hang_at
        self._rank = rank
        self._after_call = after_call
        self._calls = 0

    def __call__(self, *args, **kwargs):
        call, self._calls = self._calls, self._calls + 1
        if call != self._hang_at:
            return self._pipeline(*args, **kwargs)
        output = self._pipeline(*args, **kwargs) if self._after_call else None
        where = "after its call returned" if self._after_call else "before its call"
        print(f"hang injected on rank {self._rank} {where} by {HANG_RANK_ENV} at "
              f"{time.time():.3f}", file=sys.stderr, flush=True)
        while True:
            time.sleep(3600)
        return output  # never reached


class _CallLog:
    def __init__(self, path: str, rank: int):
        self.path = path
        self.rank = rank

    def write(self, event: str, name: str | None = None, **facts) -> None:
        line = json.dumps({"rank": self.rank, "event": event, "name": name, "time": time.time(),
                           **facts})
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


class _RecordedImage:
    """An output image whose saving is logged."""

    def __init__(self, image, log: _CallLog):
        self._image = image
        self._log = log

    def save(self, fp, *args, **kwargs):
        self._image.save(fp, *args, **kwargs)
        self._log.write("save", name=os.path.basename(str(fp)))

    def __getattr__(self, name):
        return getattr(self._image, name)


class _RecordingPipeline(_Wrapped):
    def __init__(self, pipeline, log: _CallLog):
        super().__init__(pipeline)
        self._log = log

    def __call__(self, *args, **kwargs):
        generator = kwargs.get("generator")
        prompts = kwargs.get("prompt")
        self._log.write("call", seed=generator.initial_seed() if generator is not None else None,
                        prompts=len(prompts) if isinstance(prompts, list) else 1,
                        steps=kwargs.get("num_inference_steps"))
        output = self._pipeline(*args, **kwargs)
        self._log.write("return")
        images = getattr(output, "images", None) if output is not None else None
        if isinstance(images, list):
            from PIL import Image

            output.images = [_RecordedImage(im, self._log) if isinstance(im, Image.Image) else im
                             for im in images]
        return output


def with_test_hooks(pipeline, rank: int, warmup_iters: int, batch_size: int = 1):
    """The pipeline wrapped by whichever hooks the environment asks for (none: itself). Failures
    and hangs strike at the first measured iteration, after the warm-up calls."""
    if os.environ.get(FAIL_RANK_ENV) in (str(rank), f"{rank}@{batch_size}"):
        pipeline = _FailingPipeline(pipeline, fail_at=warmup_iters, rank=rank)
    hang = os.environ.get(HANG_RANK_ENV, "")
    hang_rank, _, where = hang.partition(":")
    if hang and hang_rank in (str(rank), f"{rank}@{batch_size}"):
        pipeline = _HangingPipeline(pipeline, hang_at=warmup_iters, rank=rank,
                                    after_call=where == "after_call")
    record = os.environ.get(RECORD_CALLS_ENV)
    if record:
        pipeline = _RecordingPipeline(pipeline, _CallLog(record, rank))
    return pipeline
