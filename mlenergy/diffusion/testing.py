"""Hooks the test suite uses to make a run fail on purpose. Inactive unless their variable is
set; they wrap the pipeline once it is built, so the measured loop carries no test code."""

from __future__ import annotations

import os

FAIL_RANK_ENV = "MLENERGY_FAIL_RANK"


class _FailingPipeline:
    """The pipeline, except that call number `fail_at` (0-based) raises."""

    def __init__(self, pipeline, fail_at: int, rank: int):
        self._pipeline = pipeline
        self._fail_at = fail_at
        self._rank = rank
        self._calls = 0

    def __call__(self, *args, **kwargs):
        call, self._calls = self._calls, self._calls + 1
        if call == self._fail_at:
            raise RuntimeError(f"failure injected on rank {self._rank} by {FAIL_RANK_ENV}")
        return self._pipeline(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._pipeline, name)


def with_injected_failure(pipeline, rank: int, warmup_iters: int):
    """MLENERGY_FAIL_RANK=R: rank R raises at its first measured iteration (after the warm-up
    calls), so that tests can check that one failing rank ends the whole run promptly."""
    if os.environ.get(FAIL_RANK_ENV) != str(rank):
        return pipeline
    return _FailingPipeline(pipeline, fail_at=warmup_iters, rank=rank)
