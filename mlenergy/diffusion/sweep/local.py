"""Running points on this node: one at a time, or packed side by side on disjoint GPUs.

A point is one torchrun of the benchmark in a session of its own. One that fails or outlives its
timeout is recorded and the sweep goes on; SIGINT or SIGTERM to the sweep stops the running
points the way a timeout does (TERM to every process of theirs, a grace period, KILL).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mlenergy.diffusion.sweep import sharing
from mlenergy.diffusion.sweep.point import Point, results_complete, results_path
from mlenergy.diffusion.sweep.process import Launch

# A sweep started from inside a torchrun must not hand its own rank to the points.
LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                      "MASTER_PORT", "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")
POLL_S = 0.2


def local_command(point: Point) -> list[str]:
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
    command: Callable[[Point], list[str]] = local_command


@dataclass
class _Running:
    point: Point
    launch: Launch
    record: Path | None


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
    from mlenergy.diffusion.runlock import RunDirLock

    holder, gone = RunDirLock(point.run_dir).holder()
    if holder is None or gone is not None:
        return None
    return (f"{point.run_dir} is held by a live run (PID {holder.get('pid')} on "
            f"{holder.get('host')} since {holder.get('since')}); not started")


def _start(point: Point, settings: Settings, devices: list[str] | None) -> _Running:
    """Launch one attempt of `point`; NotStarted (nothing launched) when its run directory is
    held by a live run or the sweep cannot record it."""
    point.attempts += 1
    point.command = settings.command(point)
    point.log = settings.log(point)
    point.devices = devices
    busy = _held_by_a_live_run(point)
    if busy is not None:
        raise NotStarted(busy)
    env = dict(settings.env)
    if devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    record = None
    if settings.shared_node_dir is not None:
        env[sharing.ENV] = str(settings.shared_node_dir)
        visible = devices or [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
        try:
            # Under the sweep's PID: the point lives exactly as long as the sweep does.
            record = sharing.register(settings.shared_node_dir, point.run_dir, visible or None,
                                      os.getpid())
        except OSError as err:
            raise NotStarted(f"could not record the point in {settings.shared_node_dir} "
                             f"({err}); not started") from None
    try:
        launch = Launch(point.command, env, point.log, attempt=point.attempts)
    except OSError as err:
        if record is not None:
            sharing.finish(record)
        raise NotStarted(f"could not launch it ({err})") from None
    point.started = launch.started
    return _Running(point, launch, record)


def _settle(running: _Running, code: int | None, settings: Settings) -> None:
    point = running.point
    point.seconds = running.launch.elapsed
    point.finished = time.time()
    if running.record is not None:
        sharing.finish(running.record)
    if code is None:
        point.status, point.reason = "failed", f"timed out after {settings.timeout_s:g} s; killed"
    elif code != 0:
        point.status, point.reason = "failed", f"exit status {code}"
    elif not results_complete(results_path(point.run_dir), point):
        point.status, point.reason = "failed", "exited 0 but wrote no complete results.json"
    else:
        from mlenergy.diffusion import rundir

        point.status, point.reason = "done", None
        point.per_output = rundir.per_output(point.run_dir)


def _retry(point: Point, settings: Settings) -> bool:
    return (point.status == "failed" and point.attempts <= settings.retries
            and not point.reason.startswith("timed out"))


def _pick(queue: list[Point], running: list[_Running], free: list[str], pack: bool):
    """The next point to start now and its devices, or None: in order, but with --pack a point
    that fits the free GPUs may pass one that does not (backfill)."""
    if not pack:
        return (queue[0], None) if queue and not running else None
    for point in queue:
        if point.nproc <= len(free):
            return point, free[:point.nproc]
    return None


def _launch_next(queue, running, free, settings, counter, report, progress) -> None:
    """Start every point that may start now."""
    while (pick := _pick(queue, running, free, settings.pack)) is not None:
        point, devices = pick
        queue.remove(point)
        for d in devices or ():
            free.remove(d)
        counter[0] += point.attempts == 0
        on = f" on devices {','.join(devices)}" if devices else ""
        report(f"[{counter[0]}/{counter[1]}] {point.label()} -> {point.run_dir}{on}"
               f"{_timing(counter, len(queue) + 1, len(running) + 1)}")
        try:
            running.append(_start(point, settings, devices))
        except NotStarted as err:
            _give_back(free, devices, settings)
            point.status, point.reason = "failed", str(err)
            _announce(point, report)
            progress()


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


def _never_fit(queue: list[Point], running, free: list[str], report) -> None:
    """Points that cannot start with every slot free would wait for ever: skip them."""
    if running or not queue:
        return
    for point in list(queue):
        queue.remove(point)
        point.status = "skipped"
        point.reason = f"needs {point.nproc} GPU slot(s); this sweep has {len(free)}"
        report(f"    skipped: {point.label()}: {point.reason}")


def _loop(queue: list[Point], running: list[_Running], free: list[str], total: int,
          settings: Settings, signals: StopSignals, progress, report) -> None:
    # Points started, points to start, the sweep's start, seconds of each finished point.
    counter = [0, total, time.monotonic(), []]
    while (queue or running) and signals.received is None:
        _launch_next(queue, running, free, settings, counter, report, progress)
        if settings.pack:
            _never_fit(queue, running, free, report)
        for item in list(running):
            code = item.launch.poll()
            if code is None and item.launch.elapsed <= settings.timeout_s:
                continue
            if code is None:
                item.launch.stop()
            running.remove(item)
            _give_back(free, item.point.devices, settings)
            _settle(item, code, settings)
            counter[3].append(item.point.seconds)
            _announce(item.point, report)
            if _retry(item.point, settings):
                report(f"    attempt {item.point.attempts + 1} of {item.point.label()}")
                item.point.status = "pending"
                queue.insert(0, item.point)
            progress()
        time.sleep(POLL_S)


def run_points(points: list[Point], settings: Settings, progress: Callable[[], None],
               report: Callable[[str], None] = print) -> int | None:
    """Run every pending point. Returns the number of the signal that stopped the sweep, or
    None when every point got its turn."""
    queue = [p for p in points if p.status == "pending"]
    total = len(queue)
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


def _stop_all(running: list[_Running], queue: list[Point], signum: int, settings: Settings,
              report: Callable[[str], None]) -> None:
    name = signal.Signals(signum).name
    report(f"{name}: stopping {len(running)} running point(s)")
    for item in running:
        item.launch.stop()
        _settle(item, None, settings)
        item.point.status, item.point.reason = "interrupted", f"stopped by {name}"
    for point in queue:
        point.status, point.reason = "not_run", f"the sweep was stopped by {name}"


def note_shared_nodes(points: list[Point]) -> None:
    """For the summary: which points ran at the same time as each (on this node)."""
    ran = [p for p in points if p.started is not None and p.finished is not None]
    for point in ran:
        point.shared_node_with = [str(o.run_dir) for o in ran if o is not point
                                  and o.started < point.finished and point.started < o.finished]
