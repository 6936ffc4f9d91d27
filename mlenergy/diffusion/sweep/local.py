"""Running points on this node: one launch at a time, or packed side by side on disjoint GPUs.

A launch is one torchrun of the benchmark in a session of its own, measuring a group of points
that share one pipeline (sweep/groups.py), or one point. A point that fails or outlives its
timeout is recorded and the sweep goes on (the points its launch did not reach are launched
again); SIGINT or SIGTERM to the sweep stops the running launches the way a timeout does (TERM
to every process of theirs, a grace period, KILL).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlenergy.diffusion.output import node_sharing as sharing
from mlenergy.diffusion.sweep import groups
from mlenergy.diffusion.sweep.groups import Group
from mlenergy.diffusion.sweep.point import Point
from mlenergy.diffusion.sweep.process_tree import Launch

# A sweep started from inside a torchrun must not hand its own rank to the points.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
POLL_S = 0.2


def local_command(point: Point | Group) -> list[str]:
    if point.nproc == 1:
        # One process needs no launcher (the benchmark sets up its own one-rank group).
        return [sys.executable, "-m", "mlenergy.diffusion.benchmark", *point.benchmark_args]
    # --standalone: a private c10d rendezvous on a free local port, so that points running side
    # by side never meet each other's ranks.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={point.nproc}", "-m", "mlenergy.diffusion.benchmark",
            *point.benchmark_args]


def child_env(compile_cache: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_VARIABLES}
    if compile_cache is not None:
        env["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache)
    return env


def log_path(out_dir: Path, point: Point) -> Path:
    relative = point.run_dir.relative_to(out_dir) if point.run_dir.is_relative_to(out_dir) \
        else Path(point.run_dir.parent.name)
    return out_dir / "sweep_logs" / relative.parent / (point.run_dir.name + ".log")


@dataclass
class Settings:
    timeout_s: float
    log: Callable[[Point], Path]
    env: dict = field(default_factory=child_env)
    retries: int = 0
    # Device slots (CUDA_VISIBLE_DEVICES entries); with `pack`, each running point gets its own.
    slots: tuple[str, ...] = ()
    pack: bool = False
    shared_node_dir: Path | None = None
    command: Callable[[Point | Group], list[str]] = local_command
    one_point_per_process: bool = False
    # (seconds, processes) of every launch that ended: the GPU time the sweep booked.
    booked: list[tuple[float, int]] = field(default_factory=list)


@dataclass
class _Running:
    group: Group
    launch: Launch
    records: list[Path]

    @property
    def devices(self) -> list[str] | None:
        return self.group.points[0].devices


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP (a closed terminal) set `received` instead of ending the
    sweep at once: the sweep then stops its points and writes its summary."""

    def __init__(self):
        self.received: int | None = None

    def _handle(self, signum, _frame):
        self.received = signum

    def __enter__(self):
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGINT,
                                                                      signal.SIGTERM,
                                                                      signal.SIGHUP)}
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)


class NotStarted(Exception):
    """A point that must not be launched now, and why."""


def _held_by_a_live_run(point: Point) -> str | None:
    from mlenergy.diffusion.output.runlock import RunDirLock

    holder, gone = RunDirLock(point.run_dir).holder()
    if holder is None or gone is not None:
        return None
    return (f"{point.run_dir} is held by a live run (PID {holder.get('pid')} on "
            f"{holder.get('host')} since {holder.get('since')}); not started")


def _start(group: Group, settings: Settings, devices: list[str] | None,
           report: Callable[[str], None]) -> _Running | None:
    """Launch one attempt of `group`. A point whose run directory is held by a live run is not
    started (recorded as failed, with why); None when no point is left or nothing could be
    launched (its points then failed too)."""
    for point in list(group.points):
        busy = _held_by_a_live_run(point)
        if busy is not None:
            group.points.remove(point)
            _not_started(point, busy, report)
    if not group.points:
        return None
    command, log = settings.command(group), settings.log(group.points[0])
    for point in group.points:
        point.attempts += 1
        point.command, point.log, point.devices = command, log, devices
    env = dict(settings.env)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    try:
        records = _register(group, settings, env, devices)
        launch = Launch(command, env, log, attempt=group.points[0].attempts)
    except NotStarted as err:
        for point in group.points:
            _not_started(point, str(err), report)
        return None
    except OSError as err:
        for record in records:
            sharing.finish(record)
        for point in group.points:
            _not_started(point, f"could not launch it ({err})", report)
        return None
    for point in group.points:
        point.started = launch.started
    return _Running(group, launch, records)


def _register(group: Group, settings: Settings, env: dict, devices) -> list[Path]:
    """Each point's record in the node's shared_node_runs (under the sweep's PID: it lives
    exactly as long as the sweep does)."""
    if settings.shared_node_dir is None:
        return []
    env[sharing.ENV] = str(settings.shared_node_dir)
    visible = devices or [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    run_dirs = [p.run_dir for p in group.points]
    records: list[Path] = []
    try:
        for point in group.points:
            records.append(sharing.register(settings.shared_node_dir, point.run_dir,
                                            visible or None, os.getpid(), same_process=run_dirs))
    except OSError as err:
        for record in records:
            sharing.finish(record)
        raise NotStarted(f"could not record the point in {settings.shared_node_dir} "
                         f"({err}); not started") from None
    return records


def _not_started(point: Point, reason: str, report: Callable[[str], None]) -> None:
    point.status, point.reason = "failed", reason
    _announce(point, report)


def _settle(running: _Running, code: int | None, settings: Settings,
            signal_name: str | None = None) -> list[Point]:
    """Every point's status once its launch ended; returns the points it never reached."""
    for record in running.records:
        sharing.finish(record)
    settings.booked.append((running.launch.elapsed, running.group.nproc))
    why_stopped = None
    if signal_name is not None:
        why_stopped = f"stopped by {signal_name}"
    elif code is None:
        why_stopped = f"timed out after {_timeout(running.group, settings):g} s; killed"
    return groups.settle(running.group, code, why_stopped, running.launch.started,
                         by_signal=signal_name is not None)


def _timeout(group: Group, settings: Settings) -> float:
    """--timeout_s is per point: a launch of N points gets N times as long."""
    return settings.timeout_s * len(group.points)


def _retry(point: Point, settings: Settings) -> bool:
    return (point.status == "failed" and point.attempts <= settings.retries
            and not point.reason.startswith("timed out"))


def _pick(queue: list[Group], running: list[_Running], free: list[str], pack: bool):
    """The next launch to start now and its devices, or None: in order, but with --pack a launch
    that fits the free GPUs may pass one that does not (backfill)."""
    if not pack:
        return (queue[0], None) if queue and not running else None
    for group in queue:
        if group.nproc <= len(free):
            return group, free[:group.nproc]
    return None


def _launch_next(queue, running, free, settings, counter, report, progress) -> None:
    """Start every launch that may start now."""
    while (pick := _pick(queue, running, free, settings.pack)) is not None:
        group, devices = pick
        queue.remove(group)
        for d in devices or ():
            free.remove(d)
        counter[0] += sum(p.attempts == 0 for p in group.points)
        on = f" on devices {','.join(devices)}" if devices else ""
        left = sum(len(g.points) for g in queue) + len(group.points)
        report(f"[{counter[0]}/{counter[1]}] {group.label()} -> {group.run_dir}{on}"
               f"{_timing(counter, left, len(running) + 1)}")
        started = _start(group, settings, devices, report)
        if started is None:
            _give_back(free, devices, settings)
            progress()
        else:
            running.append(started)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _timing(counter: list, left: int, side_by_side: int) -> str:
    """` (elapsed 3m05s, about 12m00s left)`: the time left estimated from the points finished
    so far, as many at a time as run now."""
    elapsed = time.monotonic() - counter[2]
    finished = counter[3]
    if not finished:
        return f" (elapsed {_clock(elapsed)})"
    left_s = sum(finished) / len(finished) * left / side_by_side
    return f" (elapsed {_clock(elapsed)}, about {_clock(left_s)} left)"


def _give_back(free: list[str], devices, settings: Settings) -> None:
    free[:] = sorted(free + list(devices or ()), key=settings.slots.index)


def _never_fit(queue: list[Group], running, free: list[str], report) -> None:
    """Launches that cannot start with every slot free would wait for ever: skip their points."""
    if running or not queue:
        return
    for group in list(queue):
        queue.remove(group)
        for point in group.points:
            point.status = "skipped"
            point.reason = f"needs {point.nproc} GPU slot(s); this sweep has {len(free)}"
            report(f"    skipped: {point.label()}: {point.reason}")


def _finish(item: _Running, code: int | None, queue: list[Group], settings: Settings,
            counter: list, report) -> None:
    """A launch ended: its points settled, announced, and what is left of it queued again."""
    unreached = _settle(item, code, settings)
    for point in item.group.points:
        if point not in unreached:
            if point.seconds is not None:
                counter[3].append(point.seconds)
            _announce(point, report)
    again = [p for p in item.group.points if _retry(p, settings)]
    for point in again:
        report(f"    attempt {point.attempts + 1} of {point.label()}")
        point.status = "pending"
    if again or unreached:
        queue.insert(0, Group(again + unreached))


def _loop(queue: list[Group], running: list[_Running], free: list[str], total: int,
          settings: Settings, signals: StopSignals, progress, report) -> None:
    # Points started, points to start, the sweep's start, seconds of each finished point.
    counter = [0, total, time.monotonic(), []]
    while (queue or running) and signals.received is None:
        _launch_next(queue, running, free, settings, counter, report, progress)
        if settings.pack:
            _never_fit(queue, running, free, report)
        for item in list(running):
            code = item.launch.poll()
            if code is None and item.launch.elapsed <= _timeout(item.group, settings):
                continue
            if code is None:
                item.launch.stop()
            running.remove(item)
            _give_back(free, item.devices, settings)
            _finish(item, code, queue, settings, counter, report)
            progress()
        time.sleep(POLL_S)


def run_points(points: list[Point], settings: Settings, progress: Callable[[], None],
               report: Callable[[str], None] = print) -> int | None:
    """Run every pending point, in groups that share a pipeline unless
    `settings.one_point_per_process`. Returns the number of the signal that stopped the sweep,
    or None when every point got its turn."""
    queue = groups.make_groups(points, settings.one_point_per_process)
    total = sum(len(g.points) for g in queue)
    free = list(settings.slots)
    running: list[_Running] = []
    with StopSignals() as signals:
        try:
            _loop(queue, running, free, total, settings, signals, progress, report)
        except BaseException:
            # An unexpected error must not leave points running unsupervised.
            for item in running:
                item.launch.stop()
            raise
    if signals.received is not None:
        _stop_all(running, queue, signals.received, settings, report)
    return signals.received


def _announce(point: Point, report: Callable[[str], None]) -> None:
    status = point.status + (f" ({point.reason})" if point.reason else "")
    took = f" in {point.seconds:.1f} s" if point.seconds is not None else ""
    headline = f" ({point.headline()})" if point.headline() else ""
    report(f"    {status}{took}: {point.label()}{headline}")
    if point.status == "failed" and point.log is not None and point.log.exists():
        tail = point.log.read_text(errors="replace").splitlines()[-15:]
        report("\n".join(f"    | {line}" for line in tail))


def _stop_all(running: list[_Running], queue: list[Group], signum: int, settings: Settings,
              report: Callable[[str], None]) -> None:
    name = signal.Signals(signum).name
    report(f"{name}: stopping {len(running)} running launch(es)")
    for item in running:
        item.launch.stop()
        _settle(item, None, settings, signal_name=name)
    for group in queue:
        for point in group.points:
            point.status, point.reason = "not_run", f"the sweep was stopped by {name}"


def efficiency(points: list[Point], booked: list[tuple[float, int]]) -> dict:
    """How much of the GPU time this sweep booked (each launch's wall time x its GPUs) was
    spent inside measured windows (each point measured now: its iterations' time x its GPUs)."""
    booked_s = sum(seconds * nproc for seconds, nproc in booked)
    measured_s = sum(((p.per_output or {}).get("measured_s") or 0.0) * p.nproc for p in points
                     if p.status == "done")
    return {"launches": len(booked), "booked_gpu_s": booked_s, "measured_gpu_s": measured_s,
            "measured_share": measured_s / booked_s if booked_s > 0 else None}


def note_shared_nodes(points: list[Point]) -> None:
    """For the summary: which points ran at the same time as each (on this node)."""
    ran = [p for p in points if p.started is not None and p.finished is not None]
    for point in ran:
        point.shared_node_with = [str(o.run_dir) for o in ran if o is not point
                                  and o.started < point.finished and point.started < o.finished]
