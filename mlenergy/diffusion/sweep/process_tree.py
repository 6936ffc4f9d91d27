"""A point's processes, all of them, and stopping them for good.

torchrun starts its workers in sessions of their own, so signalling torchrun's process group does
not reach them, and once torchrun is gone they are children of init. The tree is therefore
tracked from /proc while the point runs: every process that descends from the launcher (or from
a process already tracked) is remembered by PID and start time, and stopping the point signals
each of them (TERM, a grace period, KILL) until none is left.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

# After SIGTERM, how long a point's processes get to exit before they are SIGKILLed. Short: a
# point stopped by a signal to the sweep must be gone within seconds, GPUs freed.
KILL_GRACE_S = 5.0


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (parent pid, state, start time) of every process on this machine."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # The command name may hold spaces and parentheses: split after its last ')'.
        fields = stat[stat.rfind(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), fields[0], fields[19])
    return table


class ProcessTree:
    """Every process started under `root_pid`, seen so far."""

    def __init__(self, root_pid: int):
        self.root_pid = root_pid
        # pid -> start time, to survive PID reuse. The root is taken once, here: were it
        # re-added on a later refresh, a reused PID would make a stranger's tree ours to kill.
        table = _process_table()
        self.known: dict[int, str] = ({root_pid: table[root_pid][2]} if root_pid in table
                                      else {})
        self.refresh()

    def refresh(self) -> dict:
        table = _process_table()
        # A tracked PID that now names another process has been reused: forget it.
        self.known = {pid: start for pid, start in self.known.items()
                      if pid not in table or table[pid][2] == start}
        children: dict[int, list[int]] = {}
        for pid, (ppid, _, _) in table.items():
            children.setdefault(ppid, []).append(pid)
        frontier = [pid for pid in self.known if pid in table]
        while frontier:
            pid = frontier.pop()
            for child in children.get(pid, ()):
                if child not in self.known:
                    self.known[child] = table[child][2]
                    frontier.append(child)
        return table

    def alive(self) -> list[int]:
        table = self.refresh()
        return sorted(pid for pid, start in self.known.items()
                      if pid in table and table[pid][2] == start and table[pid][1] != "Z")

    def signal(self, sig: int) -> None:
        for pid in self.alive():
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace_s: float = KILL_GRACE_S) -> None:
        """TERM every process of the tree, wait up to `grace_s`, KILL what is left, and return
        once none is alive (or after a few seconds more, which only an unkillable process in
        the kernel would take)."""
        self.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while self.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while self.alive() and time.monotonic() < deadline:
            self.signal(signal.SIGKILL)
            time.sleep(0.1)


_PR_SET_PDEATHSIG = 1


def _die_with_the_sweep() -> None:
    """In the launcher, between fork and exec: SIGKILL when the sweep ends, however it ends
    (SIGKILL, a crash, a closed terminal). The ranks die with the launcher in turn
    (lifeline.py), so no point measures on unsupervised. Linux only; elsewhere the sweep's own
    signal handling is all there is."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


class Launch:
    """One attempt of a point: its command, its log, its process tree."""

    def __init__(self, command: list[str], env: dict, log: Path, attempt: int):
        log.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self._start = time.monotonic()
        # Always appended, never truncated: an earlier attempt's lines stay, and a writer that
        # still has the file open (a run of another sweep) never leaves a hole of NUL bytes.
        self._out = open(log, "a")
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._out.write(f"=== attempt {attempt} at {stamp} (sweep PID {os.getpid()})\n"
                        f"$ {shlex.join(command)}\n")
        self._out.flush()
        # Its own session: the terminal's Ctrl-C goes to the sweep, which stops the point.
        self.proc = subprocess.Popen(command, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                     preexec_fn=_die_with_the_sweep)
        self.tree = ProcessTree(self.proc.pid)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def poll(self) -> int | None:
        """The launcher's exit status once it has exited and no process of the point is left
        (workers that outlived it are stopped: they must not hold GPUs for the next point)."""
        self.tree.refresh()
        code = self.proc.poll()
        if code is None:
            return None
        if self.tree.alive():
            self.tree.stop(grace_s=1.0)
        self._out.close()
        return code

    def stop(self, grace_s: float = KILL_GRACE_S) -> None:
        self.tree.stop(grace_s)
        self.proc.wait()
        self._out.close()
