"""The first code a spawned monitor process runs: it ends the process when the rank that started
it ends.

Zeus polls power and temperature in processes started by multiprocessing's `spawn`, each looping
until its parent sets a stop event. A rank that ends abruptly (a failure's `os._exit`, a fatal
signal, SIGKILL from its launcher, the scheduler or the OOM killer) never sets it, and `spawn`'s
daemon flag is honoured only at a normal interpreter exit: the pollers ran on, orphaned, reading
NVML for ever and holding the rank's stdout and stderr open, so that a pipe from the run
(`benchmark.py ... | tee log`) never reached its end (seen on an H100, 2026-12-05: a failed run
held its call for nine minutes).

`probes.gpus` names this module as the parent's main module while the pollers start, so `spawn`
runs it (as `__mp_main__`) before the poller's own code. Imports nothing but the standard library:
it is all a poller loads besides Zeus.
"""

from __future__ import annotations

import os
import signal
import threading
import time

# The PID of the rank starting the pollers, in the environment they inherit.
PARENT_ENV = "MLENERGY_MONITOR_PARENT"
# How often a poller looks for its rank: the longest an orphan outlives it.
WATCH_PERIOD_S = 0.5


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(WATCH_PERIOD_S)
    os.kill(os.getpid(), signal.SIGKILL)  # nothing of a poller is worth a clean exit


def bind_to_parent() -> bool:
    """End this process (within WATCH_PERIOD_S) once the rank named in PARENT_ENV is no longer
    its parent. False where no rank is named (not started by the benchmark)."""
    named = os.environ.get(PARENT_ENV)
    if not named:
        return False
    parent = int(named)
    if os.getppid() != parent:  # the rank ended while this process was starting
        os.kill(os.getpid(), signal.SIGKILL)
    # A thread, not prctl(PR_SET_PDEATHSIG): that fires when the parent *thread* ends, and the
    # thread that started a poller need not live as long as the rank.
    threading.Thread(target=_watch, args=(parent,), name="mlenergy-monitor-lifeline",
                     daemon=True).start()
    return True


if __name__ == "__mp_main__":
    bind_to_parent()
