"""Ranks die with their launcher.

torch elastic starts each worker in its own session, so a signal to torchrun's process group
never reaches the ranks, and a SIGKILLed torchrun leaves them running with parent 1: they go on
measuring, hold the GPUs the next measurement needs, and write a results.json nobody asked for.
Every rank started by torchrun therefore asks the kernel for SIGKILL when its parent dies
(`prctl(PR_SET_PDEATHSIG)`, Linux), and a watcher thread checks the parent PID as well, for
kernels without prctl and for the moment between the fork and the prctl call.

Imports nothing heavy: it runs before torch is imported, so a launcher killed during the
seconds of imports still takes its ranks with it.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
# How often the watcher looks at the parent PID.
WATCH_PERIOD_S = 0.5

_bound_parent: int | None = None


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _die_now() -> None:
    # SIGKILL, not an exception: nothing of this rank may run on to write results.
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(parent: int) -> None:
    stop = threading.Event()
    while not stop.wait(WATCH_PERIOD_S):
        if os.getppid() != parent:
            _die_now()


def bind_to_launcher(force: bool = False) -> int | None:
    """Under torchrun (or with `force`), end this process when its parent ends. Returns the
    parent PID it is bound to, or None when not bound (a plain `python` launch, where the parent
    is a shell the user may well leave)."""
    global _bound_parent
    if _bound_parent is not None:
        return _bound_parent
    if not (force or launched_by_torchrun()):
        return None
    # The PID seen here is the launcher's: the process is a few milliseconds old. (torchrun may
    # itself be PID 1 in a container, so 1 is no sign of an orphan.)
    parent = os.getppid()
    _set_parent_death_signal()
    threading.Thread(target=_watch, args=(parent,), name="mlenergy-lifeline",
                     daemon=True).start()
    _bound_parent = parent
    return parent
