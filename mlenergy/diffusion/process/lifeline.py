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

from mlenergy.diffusion.process.launch import launched_by_torchrun

_PR_SET_PDEATHSIG = 1
# How often the watcher looks at the parent PID.
WATCH_PERIOD_S = 0.5

_bound_parent: int | None = None


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
    # SIGKILL, not an exception: nothing of this rank may run on to write results. The run
    # directory's lock goes first, so that a resubmitted point need not wait for it to go stale.
    _run_last_words()
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


# What must happen even when a rank ends abruptly (os._exit, a fatal signal): releasing the run
# directory's lock, chiefly. atexit handlers do not run on those paths.
_last_words: list = []
_SIGNALS = ("SIGTERM", "SIGINT", "SIGHUP")
_previous_handlers: dict = {}


def before_abrupt_exit(callback) -> None:
    """Run `callback` (idempotent, quick) before this process ends through `abrupt_exit` or a
    SIGTERM, SIGINT or SIGHUP, as well as at a normal exit (the caller registers that)."""
    if callback not in _last_words:
        _last_words.append(callback)
    if threading.current_thread() is threading.main_thread():
        for name in _SIGNALS:
            sig = getattr(signal, name)
            if sig not in _previous_handlers:
                _previous_handlers[sig] = signal.signal(sig, _on_fatal_signal)


def forget(callback) -> None:
    """`callback` has run (or is no longer needed): drop it, and with the last one, the signal
    handlers that ran it."""
    if callback in _last_words:
        _last_words.remove(callback)
    if not _last_words and threading.current_thread() is threading.main_thread():
        for sig, handler in _previous_handlers.items():
            signal.signal(sig, handler)
        _previous_handlers.clear()


def _run_last_words() -> None:
    for callback in list(_last_words):
        try:
            callback()
        except Exception:  # a last word must not keep the process from ending
            pass
    _last_words.clear()


def _on_fatal_signal(signum, _frame) -> None:
    """Release what must be released, then end by the same signal as its default action would
    (the exit status still says which signal it was)."""
    _run_last_words()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def abrupt_exit(code: int) -> None:
    """os._exit(code) after the last words: for a rank that must end now, without unwinding
    through collectives that would wait for the others."""
    _run_last_words()
    os._exit(code)
