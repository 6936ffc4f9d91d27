"""No rank may hold a run past MLENERGY_COLLECTIVE_TIMEOUT_S.

Two parts. Every process group gets the configured timeout: torch gives a group created without
one its backend's default (30 minutes for gloo), whatever the default group got, and xDiT
(`init_distributed_environment`, `initialize_model_parallel`) and yunchang create theirs that
way. The groups are made under a startup timeout (ranks may drift apart while they start and
build), and once xDiT's are all built every group is set to the configured value. And a watchdog thread in every rank beats a counter in the launcher's store and watches the
others': a rank whose counter stands still for the timeout is stopped, frozen or gone; the
lowest live rank says which in one line, the silent ranks on this host are killed, and the run
ends (torchrun stops the rest).
"""

from __future__ import annotations

import datetime
import logging
import math
import os
import signal
import socket
import sys
import threading
import time

logger = logging.getLogger("mlenergy.diffusion")

DEFAULT_TIMEOUT_S = 1800.0
STARTUP_TIMEOUT_S = 1800.0  # torch's default for gloo
_MAX_TIMEOUT_S = 7 * 24 * 3600.0
_KEY = "mlenergy-watchdog"


def collective_timeout_s() -> float:
    """MLENERGY_COLLECTIVE_TIMEOUT_S: seconds a collective may wait for a rank. ValueError,
    saying how to fix it, when it is not a sensible number."""
    raw = os.environ.get("MLENERGY_COLLECTIVE_TIMEOUT_S")
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not 0 < seconds <= _MAX_TIMEOUT_S:
        raise ValueError(f"MLENERGY_COLLECTIVE_TIMEOUT_S={raw!r} is not a number of seconds "
                         "above 0 and at most a week; set it to e.g. 1800, or unset it")
    return seconds


def collective_timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=collective_timeout_s())


def startup_timeout() -> datetime.timedelta:
    """While the ranks start, load and build, they drift apart legitimately (rank 0 alone reads
    the prompts; imports on a busy host take tens of seconds): groups are made with the
    configured timeout or torch's own default, whichever is longer, and tightened once built."""
    return datetime.timedelta(seconds=max(collective_timeout_s(), STARTUP_TIMEOUT_S))


def apply_to_every_group(timeout: datetime.timedelta) -> None:
    """Make `timeout` the default of every process group created from now on."""
    from torch.distributed import distributed_c10d as c10d

    c10d.default_pg_timeout = timeout
    if getattr(c10d, "default_pg_nccl_timeout", None) is not None:
        c10d.default_pg_nccl_timeout = timeout


def tighten_every_group() -> None:
    """Once xDiT has built its groups: every group, and any made later, waits at most the
    configured timeout."""
    from torch.distributed import distributed_c10d as c10d

    timeout = collective_timeout()
    apply_to_every_group(timeout)
    for group in list(c10d._world.pg_map):
        try:
            group.set_timeout(timeout)
        except (AttributeError, RuntimeError) as err:
            logger.warning("could not set the collective timeout of a process group (%s); it "
                           "keeps the startup timeout", err)


class Watchdog:
    def __init__(self, store, rank: int, world_size: int, limit_s: float):
        self.store, self.rank, self.world_size, self.limit_s = store, rank, world_size, limit_s
        self.period_s = min(5.0, max(0.2, limit_s / 5))
        now = time.monotonic()
        # Per peer: the last counter value seen, and when it last changed (local clock).
        self.seen = {peer: (-1, now) for peer in self.peers}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="mlenergy-watchdog",
                                        daemon=True)

    @property
    def peers(self) -> list[int]:
        return [r for r in range(self.world_size) if r != self.rank]

    def start(self) -> None:
        self.store.set(f"{_KEY}/whereabouts/{self.rank}", f"{socket.gethostname()} {os.getpid()}")
        self._thread.start()

    def stop(self) -> None:
        """This rank is done: its peers stop watching it."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self.store.set(f"{_KEY}/finished/{self.rank}", "1")
        except Exception:  # the store may already be gone at shutdown
            pass

    def silent(self, longer_than_s: float) -> dict[int, float]:
        now = time.monotonic()
        return {peer: now - changed for peer, (_, changed) in self.seen.items()
                if now - changed > longer_than_s}

    def _look(self) -> None:
        self.store.add(f"{_KEY}/beat/{self.rank}", 1)
        now = time.monotonic()
        for peer in self.peers:
            if self.store.check([f"{_KEY}/finished/{peer}"]):
                self.seen[peer] = (self.seen[peer][0], math.inf)
                continue
            count = self.store.add(f"{_KEY}/beat/{peer}", 0)
            if count != self.seen[peer][0]:
                self.seen[peer] = (count, now)

    def _loop(self) -> None:
        while not self._stop.wait(self.period_s):
            try:
                self._look()
            except Exception as err:  # the launcher's store is gone: the lifeline ends us
                logger.warning("watchdog stopped: the launcher's store is unreachable (%s)", err)
                return
            silent = self.silent(self.limit_s)
            if silent:
                self._end(silent)

    def _end(self, silent: dict[int, float]) -> None:
        live = [r for r in range(self.world_size) if r not in silent]
        if self.rank == min(live):
            # On a line of its own, even after a progress bar's carriage return.
            print(f"\nerror: {describe(silent)}: stopped, frozen or its host lost; ending the "
                  f"run (MLENERGY_COLLECTIVE_TIMEOUT_S={self.limit_s:g})", file=sys.stderr,
                  flush=True)
        self._kill_on_this_host(silent)
        logging.shutdown()
        from mlenergy.diffusion.process import lifeline

        lifeline.abrupt_exit(1)

    def _kill_on_this_host(self, ranks) -> None:
        """A stopped process ignores the launcher's SIGTERM until its grace period is over."""
        for peer in ranks:
            try:
                host, pid = self.store.get(f"{_KEY}/whereabouts/{peer}").decode().split()
                if host == socket.gethostname():
                    os.kill(int(pid), signal.SIGKILL)
            except Exception:
                pass


def describe(silent: dict[int, float]) -> str:
    return "; ".join(f"rank {peer} gave no sign of life for {age:.1f} s"
                     for peer, age in sorted(silent.items()))


_watchdog: Watchdog | None = None


def _launcher_store(rank: int, world_size: int, limit_s: float):
    """A client of the store torchrun's ranks met at, of its own (the process group's client
    is busy on the main thread), under a prefix for this attempt of this run."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=min(limit_s, 60))
    from mlenergy.diffusion.process.launch import attempt_key, rendezvous_address

    address, port = rendezvous_address()
    store = dist.TCPStore(address, port, world_size, False, timeout=timeout)
    return dist.PrefixStore(attempt_key(), store)


def start(rank: int, world_size: int) -> None:
    """Watch the other ranks (several processes only)."""
    global _watchdog
    if world_size < 2 or _watchdog is not None:
        return
    limit_s = collective_timeout_s()
    _watchdog = Watchdog(_launcher_store(rank, world_size, limit_s), rank, world_size, limit_s)
    _watchdog.start()


def stop() -> None:
    if _watchdog is not None:
        _watchdog.stop()


def silent_note() -> str:
    """For a rank's last words: which peers have been silent for a while, if any. Those on
    this host are killed: the run is ending, and a stopped process would hold the launcher
    for its whole grace period."""
    if _watchdog is None:
        return ""
    silent = _watchdog.silent(2 * _watchdog.period_s)
    _watchdog._kill_on_this_host(silent)
    return f" ({describe(silent)})" if silent else ""
