"""The lock of a run directory: one run measures into it at a time, and a lock never outlives
its run (see RunDirLock)."""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from datetime import datetime
from pathlib import Path

from mlenergy.diffusion.process import lifeline

logger = logging.getLogger("mlenergy.diffusion")

# A lock file younger than this may still be being written by its holder.
_LOCK_WRITE_GRACE_S = 5.0
# A lock held from another host whose heartbeat is older than this is stale (see RunDirLock).
_LOCK_STALE_S = 300.0


def config_error(message: str) -> ValueError:
    try:
        from mlenergy.diffusion.inputs.config import ConfigError  # where the refactor moves it
    except ImportError:
        from mlenergy.diffusion.planning.plan import ConfigError
    return ConfigError(message)


def _process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot): with the PID, it names one
    process even after the PID is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_stale_s() -> float:
    """MLENERGY_LOCK_STALE_S: how long a lock held from another host may go without its
    heartbeat before it counts as left by a dead run (default 300 s)."""
    try:
        value = float(os.environ.get("MLENERGY_LOCK_STALE_S", _LOCK_STALE_S))
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise config_error(f"MLENERGY_LOCK_STALE_S={os.environ['MLENERGY_LOCK_STALE_S']!r} is "
                            "not a number of seconds above 0; set it to e.g. 300, or unset it")
    return value


class RunDirLock:
    """An exclusive claim on one run directory, by a file beside it (the directory itself may
    be moved aside while the lock is held).

    Whether the holder lives: on its own host, by its PID and process start time; from another
    host (a cluster's shared file system), by its heartbeat: the holder touches the file every
    `lock_stale_s() / 10` seconds, and a lock whose file has not changed for `lock_stale_s()`
    was left by a run that is gone (killed with its node, say). A lock is released on every way
    out of the run that can run code (normal end, exception, `os._exit` through
    `lifeline.abrupt_exit`, SIGTERM, SIGINT, SIGHUP); SIGKILL leaves it, to be taken over as
    stale, with a warning that names it."""

    def __init__(self, run_dir: Path, release_on_signals: bool = True,
                 holder_does: str = "being measured by another run"):
        self.run_dir = Path(run_dir)
        # What the refusal says the live holder is doing with `run_dir`.
        self.holder_does = holder_does
        self.path = self.run_dir.parent / f".{self.run_dir.name}.lock"
        self.held = False
        # False where the holder handles SIGTERM/SIGINT/SIGHUP itself (the sweep) and releases
        # the lock on its way out.
        self.release_on_signals = release_on_signals
        self._beating = threading.Event()

    def _record(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "process_start": _process_start(os.getpid()),
                "since": datetime.now().isoformat(timespec="seconds")}

    def holder(self) -> tuple[dict | None, str | None]:
        """(the holder's record, None) while it lives; (what is known of it, why it is gone)
        for a stale lock; (None, None) without a lock."""
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError):
            age = time.time() - self.path.stat().st_mtime if self.path.exists() else 1e9
            # Being written right now, or left half-written by a holder that died then.
            if age < _LOCK_WRITE_GRACE_S:
                return {"pid": "?", "host": "?", "since": "just now"}, None
            return {"pid": "?", "host": "?", "since": "?"}, "its file is unreadable"
        if not isinstance(holder, dict) or not isinstance(holder.get("pid"), int):
            return {"pid": "?", "host": "?", "since": "?"}, "its file names no process"
        if holder.get("host") != socket.gethostname():
            if age > lock_stale_s():
                return holder, (f"no heartbeat from host {holder.get('host')} for {age:.0f} s "
                                f"(MLENERGY_LOCK_STALE_S={lock_stale_s():g})")
            return holder, None
        pid = holder["pid"]
        if pid == os.getpid():
            return holder, "it names this very process"
        if not _alive(pid):
            return holder, f"PID {pid} is not running"
        started = holder.get("process_start")
        if started is not None and _process_start(pid) not in (None, started):
            return holder, f"PID {pid} now names another process"
        return holder, None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder, gone = self.holder()
                if holder is not None and gone is None:
                    raise config_error(
                        f"{self.run_dir} is {self.holder_does} (PID "
                        f"{holder.get('pid')} on {holder.get('host')} since "
                        f"{holder.get('since')}); wait for it to end, or delete {self.path} "
                        "if that run is gone") from None
                if holder is not None:
                    logger.warning("Taking over the lock %s of PID %s on %s (since %s): %s, so "
                                   "that run is gone", self.path, holder.get("pid"),
                                   holder.get("host"), holder.get("since"), gone)
                # Stale: rename first, so that of two runs finding it stale only one removes it.
                stale = self.path.with_name(f"{self.path.name}.stale.{os.getpid()}")
                try:
                    os.rename(self.path, stale)
                    stale.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._record(), f)
            self.held = True
            self._start_heartbeat()
            if self.release_on_signals:
                lifeline.before_abrupt_exit(self.release)
            return
        raise config_error(f"could not take the lock {self.path}; another run keeps taking it")

    def _start_heartbeat(self) -> None:
        period = lock_stale_s() / 10
        self._beating.clear()

        def beat() -> None:
            while not self._beating.wait(period):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        threading.Thread(target=beat, name="mlenergy-lock-heartbeat", daemon=True).start()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        self._beating.set()
        lifeline.forget(self.release)
        try:
            holder = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(holder, dict) and holder.get("pid") == os.getpid() \
                    and holder.get("host") == socket.gethostname():
                self.path.unlink()
        except (OSError, ValueError):
            pass
