"""The console: what a person running the benchmark reads.

- Log lines go to stderr, written around the progress bar (through tqdm) so that neither breaks
  the other. The bar is drawn only when stderr is a terminal: in a file (a sweep's point log, a
  Slurm output) its redraws would be `\\r` frames.
- The result (the summary table) goes to stdout, so `> out.txt` keeps exactly it; the driver log
  keeps everything.
- Third-party chatter (xDiT's DEBUG/INFO lines, which it prints on stdout; diffusers,
  transformers, datasets, hub downloads) stays quiet unless `--verbose`. What it still shows
  (xDiT's real warnings, anyone's errors) goes to stderr like our own lines.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

from mlenergy.diffusion.process.launch import launched_rank

logger = logging.getLogger("mlenergy.diffusion")

# Libraries whose INFO / WARNING lines say nothing about the measurement: ERROR and up only.
QUIET_LIBRARIES = ("diffusers", "transformers", "datasets", "huggingface_hub", "accelerate",
                   "httpx", "urllib3", "filelock")
# xDiT's warnings can change what is measured (a fallback, an unsupported scheduler), so they
# stay; except these routine facts, which it logs at WARNING level.
ROUTINE_XDIT_WARNINGS = ("Model parallel is not initialized", "Using ")

_verbose = False


class _StderrAroundBars:
    """A stream for logging handlers: stderr, written through tqdm so an active bar is cleared
    first and redrawn after the line."""

    def write(self, text: str) -> None:
        if text:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr, end="")

    def flush(self) -> None:
        sys.stderr.flush()


class _ConsoleFormatter(logging.Formatter):
    """`12:00:01 [rank 0] message`; the level is named only from WARNING up."""

    def __init__(self, rank: int):
        super().__init__(f"%(asctime)s [rank {rank}] %(message)s", datefmt="%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        if record.levelno >= logging.WARNING:
            head, _, message = line.partition("] ")
            origin = "" if record.name.startswith(logger.name) else f" ({record.name})"
            line = f"{head}] {record.levelname}{origin}: {message}"
        return line


def _driver_log_format(rank: int) -> logging.Formatter:
    return logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(message)s")


def start(verbose: bool = False) -> None:
    """Set up the console for one benchmark process, before any model library is imported:
    our lines on stderr (rank 0: from INFO; other ranks: warnings and errors), third-party
    libraries quiet unless `verbose`."""
    global _verbose
    _verbose = verbose
    rank = launched_rank()
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for old in [h for h in logger.handlers if getattr(h, "_mlenergy_console", False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(_StderrAroundBars())
    handler._mlenergy_console = True
    handler.setFormatter(_ConsoleFormatter(rank))
    handler.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    logger.addHandler(handler)
    _quiet_libraries(verbose)


def _quiet_libraries(verbose: bool) -> None:
    level = "info" if verbose else "error"
    # Read when each library is imported (most are not yet); their loggers are set below too.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", level)
    os.environ.setdefault("DIFFUSERS_VERBOSITY", level)
    os.environ.setdefault("XDIT_LOGGING_LEVEL", "DEBUG" if verbose else "WARNING")
    if not sys.stderr.isatty():
        # Download bars redraw with `\r`: noise in a log file.
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    # Python warnings (deprecations in diffusers, torch, ...) become log records: they then
    # reach the driver log and never cut through the bar.
    logging.captureWarnings(True)
    warnings_logger = logging.getLogger("py.warnings")
    warnings_logger.propagate = False
    if not any(isinstance(h.stream, _StderrAroundBars) for h in warnings_logger.handlers
               if isinstance(h, logging.StreamHandler)):
        handler = logging.StreamHandler(_StderrAroundBars())
        handler.setFormatter(_ConsoleFormatter(launched_rank()))
        warnings_logger.addHandler(handler)
    if not verbose:
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)


def route_xdit_logs() -> None:
    """Called once xfuser is imported: its loggers share one handler that prints every level
    on stdout. Send it to stderr around the bar, in our format, and quiet unless verbose."""
    xdit_handlers = logging.getLogger("xfuser").handlers
    for handler in xdit_handlers:
        if not isinstance(handler, logging.StreamHandler) or isinstance(handler,
                                                                        logging.FileHandler):
            continue
        handler.setStream(_StderrAroundBars())
        handler.setFormatter(_ConsoleFormatter(launched_rank()))
        if not _verbose:
            handler.setLevel(logging.WARNING)
            handler.addFilter(_not_routine)


def quiet_loading_bars() -> None:
    """diffusers' "Loading pipeline components" bar and transformers' checkpoint bars are for a
    terminal; in a log file (a sweep point's, a Slurm output, a pipe) their redraws are `\r`
    frames. Called once the libraries are about to load a model."""
    if sys.stderr.isatty():
        return
    import importlib

    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            importlib.import_module(name).disable_progress_bar()
        except ImportError:
            continue


def _not_routine(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(ROUTINE_XDIT_WARNINGS)


def log_to_file(path: Path, this_rank_writes: bool) -> None:
    """Everything our logger says (the summary included) and Python warnings also go to `path`
    (driver_log.txt), written by one rank."""
    if not this_rank_writes:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="w")
    handler.setFormatter(_driver_log_format(launched_rank()))
    for each in (logger, logging.getLogger("py.warnings")):
        # A second run in the same process must not keep writing the first one's log.
        for old in [h for h in each.handlers if isinstance(h, logging.FileHandler)]:
            each.removeHandler(old)
            old.close()
        each.addHandler(handler)


def progress(iterable, description: str, show: bool):
    """A progress bar over `iterable` on stderr, drawn only where `show` and stderr is a
    terminal; elsewhere the iterable itself (each iteration logs its own line anyway)."""
    if not show or not sys.stderr.isatty():
        return iterable
    from tqdm import tqdm

    _route_terminal_handlers_around_bars()
    return tqdm(iterable, desc=description, file=sys.stderr, leave=False)


# Seconds an iteration runs before its per-step line shows (MLENERGY_STEP_PROGRESS_DELAY_S).
STEP_PROGRESS_DELAY_S = 3.0


class StepProgress:
    """A per-step progress line inside an iteration (`iteration 3/8: 12/50 steps`), drawn on
    a terminal only, by one rank, and only once the iteration has run a few seconds: a video
    iteration takes minutes, an image's a second. Steps are counted from the pipeline's
    step-end callback where it takes one, else from denoiser forwards (grouped per step as the
    previous iteration showed)."""

    @classmethod
    def of_recorder(cls, recorder, show: bool) -> StepProgress:
        """The stage recorder's per-step line (one for its warm-up and measurement), fed by its
        step events."""
        if getattr(recorder, "step_progress", None) is None:
            recorder.step_progress = cls(show, recorder.accepts_step_callback)
            recorder.on_event = recorder.step_progress.event
        return recorder.step_progress

    def __init__(self, show: bool, by_callback: bool):
        self.show = show and sys.stderr.isatty()
        self.by_callback = by_callback
        self.delay = float(os.environ.get("MLENERGY_STEP_PROGRESS_DELAY_S",
                                          STEP_PROGRESS_DELAY_S))
        self.per_step: int | None = None
        self.bar = None
        self.count = self.steps = 0

    def begin(self, label: str, steps: int) -> None:
        self.count, self.steps = 0, steps
        if self.show:
            from tqdm import tqdm

            _route_terminal_handlers_around_bars()
            known = self.by_callback or self.per_step is not None
            self.bar = tqdm(total=steps if known else None, desc=label, delay=self.delay,
                            unit="step" if known else "forward", leave=False, file=sys.stderr)

    def event(self, kind: str) -> None:
        if kind != ("step" if self.by_callback else "forward"):
            return
        self.count += 1
        if self.bar is not None:
            done = self.count if self.by_callback or self.per_step is None \
                else self.count // self.per_step
            if done != self.bar.n:
                self.bar.update(done - self.bar.n)

    def end(self) -> None:
        if not self.by_callback and self.count and self.steps:
            self.per_step = max(1, round(self.count / self.steps))
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _route_terminal_handlers_around_bars() -> None:
    """Libraries imported by now (diffusers, transformers, ...) set up handlers of their own on
    stderr or stdout; what they still say (with --verbose, or errors) must not cut the bar."""
    loggers = [logging.getLogger()] + [
        candidate for candidate in logging.Logger.manager.loggerDict.values()
        if isinstance(candidate, logging.Logger)]
    for each in loggers:
        for handler in each.handlers:
            if (type(handler) is logging.StreamHandler
                    and handler.stream in (sys.stderr, sys.stdout)):
                handler.setStream(_StderrAroundBars())
    # Loggers without handlers (Zeus's) print their warnings through this one.
    last_resort = logging.StreamHandler(_StderrAroundBars())
    last_resort.setLevel(logging.WARNING)
    logging.lastResort = last_resort


def show_result(title: str, text: str) -> None:
    """The run's result: on stdout (not among the logs on stderr) and in the driver log."""
    print(f"{title}\n{text}", file=sys.stdout, flush=True)
    log_to_file_only("%s\n%s", title, text)


def log_to_file_only(message: str, *args, level: int = logging.INFO) -> None:
    """A line for the driver log alone (the full plan, a traceback): too long for a console."""
    record = logger.makeRecord(logger.name, level, __file__, 0, message, args, None)
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        handler.handle(record)


def count_text(count: int, noun: str) -> str:
    """`12.0 B parameters`, `1.2 M parameters`, `950 parameters`: never bytes-like `0.000 B`."""
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if count >= scale:
            return f"{count / scale:.1f} {suffix} {noun}"
    return f"{count} {noun}"


def bytes_text(size: float) -> str:
    """`33.8 GB`, `12.4 MB`, `960 bytes`."""
    for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if size >= scale:
            return f"{size / scale:.1f} {suffix}"
    return f"{size:.0f} bytes"


_SI_PREFIXES = ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"),
                (1.0, ""), (1e-3, "m"), (1e-6, "µ"), (1e-9, "n"), (1e-12, "p"), (1e-15, "f"))


def si_text(value: float | None, unit: str) -> str:
    """A quantity scaled to its magnitude with an SI prefix, three significant digits:
    `74.4 TFLOP`, `1.98 MFLOP`, `703 MFLOP/s`, `950 FLOP`, `427 nJ/FLOP`; `n/a` for None."""
    if value is None or value != value:
        return "n/a"
    value = float(f"{value:.3g}")  # 999.6 M rounds to 1.00 G, never to "1e+03 M"
    for scale, prefix in _SI_PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def energy_text(joules: float | None) -> str:
    return "energy not measured" if joules is None else f"{joules:,.1f} J"


def exit_quietly_on_broken_pipe(function, *args) -> int:
    """`function(*args)`, whose output may go to a reader that stops early (`... | head`): the
    reader has what it wanted, so a closed pipe ends the command quietly (status 0), not with a
    traceback, and neither does Python's own flush of stdout at exit."""
    try:
        try:
            return function(*args) or 0
        finally:
            sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
