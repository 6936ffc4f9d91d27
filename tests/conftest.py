"""Shared helpers: run the real benchmark as users do (python -m, or torchrun over gloo).

The suite sets its own environment before any test module loads, so that it behaves the same
whatever the caller exported: no Hugging Face cache of the caller's (an empty HF_HOME), the hub
offline, and none of the benchmark's own variables (test hooks, scripted GPUs, timeouts).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest


def _hermetic_environment() -> None:
    for key in list(os.environ):
        if key.startswith(("HF_", "HUGGINGFACE_", "MLENERGY_")) or key == "TRANSFORMERS_CACHE":
            del os.environ[key]
    hf_home = tempfile.mkdtemp(prefix="mlenergy-tests-hf-home-")
    atexit.register(shutil.rmtree, hf_home, ignore_errors=True)
    os.environ.update(HF_HOME=hf_home, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


_hermetic_environment()

REPO = Path(__file__).resolve().parents[1]
ENTRY = REPO / "mlenergy" / "diffusion" / "benchmark.py"

TINY_FLUX = [
    "workload:text-to-image",
    "--workload.model_id", "black-forest-labs/FLUX.1-dev",
    "--workload.weights", "tiny",
    "--workload.batch_size", "2",
    "--workload.height", "128",
    "--workload.width", "128",
    "--workload.inference_steps", "2",
]


def offline_env(tmp_path: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
               MLENERGY_CACHE_DIR=str(tmp_path / "cache"), PYTHONUNBUFFERED="1")
    # torch writes TORCHINDUCTOR_CACHE_DIR into this process's environment once anything here
    # compiles; a child must not inherit it as if a user had chosen it.
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT", "MLENERGY_FAIL_RANK", "TORCHINDUCTOR_CACHE_DIR"):
        env.pop(key, None)
    env.update(extra)
    return env


def run_benchmark(args: list[str], tmp_path: Path, nproc: int = 1, timeout: float = 300,
                  entry: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    """The benchmark as users start it; `entry`: a script of the tests' that wraps it."""
    if nproc == 1:
        cmd = [sys.executable, *([str(entry)] if entry else ["-m", "mlenergy.diffusion.benchmark"]),
               *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_port", str(_free_port()), str(entry or ENTRY), *args]
    return subprocess.run(cmd, cwd=REPO, env=offline_env(tmp_path, **env), capture_output=True,
                          text=True, timeout=timeout)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def only_run_dir(base: Path) -> Path:
    dirs = [p for p in base.iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def load_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _flag_spans(args: list[str]) -> list[tuple[str, list[str]]]:
    """(setting, tokens) per flag: `--x v`, `--x=v`, or a switch `--x` / `--no_x`."""
    spans, i = [], 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--"):
            spans.append(("", [token]))
            i += 1
            continue
        name = token.split("=", 1)[0][2:]
        head, _, leaf = name.rpartition(".")
        setting = f"{head}.{leaf[3:]}" if head and leaf.startswith("no_") else \
            leaf[3:] if not head and leaf.startswith("no_") else name
        takes_value = "=" not in token and i + 1 < len(args) and \
            not args[i + 1].startswith(("--", "workload:"))
        spans.append((setting, args[i:i + 1 + takes_value]))
        i += 1 + takes_value
    return spans


def with_flags(args: list[str], *extra: str) -> list[str]:
    """`args` then `extra`, a flag in `extra` replacing the same one in `args` (the benchmark
    refuses a flag given twice)."""
    overrides = {setting for setting, _ in _flag_spans(list(extra)) if setting}
    kept = [tok for setting, toks in _flag_spans(list(args)) if setting not in overrides
            for tok in toks]
    return [*kept, *extra]


@pytest.fixture(autouse=True)
def _in_process_runs_leave_the_suite_as_it_was(monkeypatch):
    """The benchmark's main, called in this process, sets up the console for a process of its
    own: our logger stops propagating (so caplog would see nothing in later tests) and Python
    warnings become log records. Each test gets the logging it started with back. And a failing
    rank ends with os._exit (what torchrun needs to see), which here would end the whole suite
    without a word: it raises instead."""
    import logging

    from mlenergy.diffusion.process import runtime

    def fail(rank: int, err: BaseException) -> None:
        raise AssertionError(f"rank {rank} failed in the test process: "
                             f"{type(err).__name__}: {err}") from err

    monkeypatch.setattr(runtime, "die", fail)
    loggers = [logging.getLogger(name) for name in ("mlenergy.diffusion", "py.warnings")]
    saved = [(lg, lg.propagate, lg.level, list(lg.handlers)) for lg in loggers]
    yield
    for lg, propagate, level, handlers in saved:
        lg.propagate, lg.level, lg.handlers[:] = propagate, level, handlers
    logging.captureWarnings(False)


@pytest.fixture
def tiny_flux_args(tmp_path):
    def make(base: Path, *extra: str) -> list[str]:
        return with_flags([*TINY_FLUX, "--workload.base_dir", str(base)], *extra)
    return make


# -- runs on scripted GPUs (mlenergy/diffusion/probes/fake.py) --------------------------------

TOOLKIT_GPU = "scripted"
TOOLKIT_MODEL = Path("text-to-image") / "black-forest-labs" / "FLUX.1-dev"


def write_gpu_script(path: Path, events: Path | None = None, **script) -> Path:
    """A scripted-GPU file; its fences and windows go to `events` when given."""
    if events is not None:
        script["events"] = str(events)
    path.write_text(json.dumps(script))
    return path


def read_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def toolkit_base_dir(root: Path) -> Path:
    """Where a run must write so that `mlenergy-data` finds it under `root`: the layout
    <root>/diffusion/<gpu>/current/run/diffusion/<task>/<org>/<model>/<params>/results.json."""
    return root / "diffusion" / TOOLKIT_GPU / "current" / "run" / "diffusion" / TOOLKIT_MODEL


def toolkit_config_dir(root: Path, base_dir: Path) -> Path:
    """The toolkit's config dir, holding the model_info.json the run wrote."""
    config_dir = root.parent / f"{root.name}-configs"
    (config_dir / TOOLKIT_MODEL).mkdir(parents=True, exist_ok=True)
    shutil.copy(base_dir / "model_info.json", config_dir / TOOLKIT_MODEL / "model_info.json")
    return config_dir


@dataclass
class ScriptedRun:
    """A finished run on scripted GPUs: its results, its event log and where the toolkit and
    the report find it."""

    run_dir: Path
    doc: dict
    events: list[dict]
    script: dict
    root: Path
    config_dir: Path
    nproc: int
    args: list[str]


def scripted_run(tmp: Path, args: list[str], script: dict, nproc: int = 1,
                 **env: str) -> ScriptedRun:
    """Run the benchmark on scripted GPUs, every pipeline call and saved image recorded in the
    same event log as the GPUs' fences and windows."""
    root = tmp / "results"
    base = toolkit_base_dir(root)
    events = tmp / "events.jsonl"
    gpus = write_gpu_script(tmp / "gpus.json", events, **script)
    full_args = [*args, "--workload.base_dir", str(base)]
    proc = run_benchmark(full_args, tmp, nproc=nproc, MLENERGY_FAKE_GPUS=str(gpus),
                         MLENERGY_RECORD_CALLS=str(events), **env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = only_run_dir(base)
    return ScriptedRun(run_dir=run_dir, doc=load_results(run_dir), events=read_events(events),
                       script=script, root=root, config_dir=toolkit_config_dir(root, base),
                       nproc=nproc, args=full_args)


# Two processes under Ulysses 2 on one node's two scripted GPUs. Rank 1's device drains slowly at
# every fence, so a window that opened without waiting for it would show; the power timeline
# reads 10% low, so the timeline self-check must fail.
ULYSSES2_SCRIPT = {"power_w": [300.0, 500.0], "sync_delay_s": {"1": 0.3},
                   "timeline_scale": 0.9}


@pytest.fixture(scope="session")
def ulysses2_scripted_run(tmp_path_factory) -> ScriptedRun:
    tmp = tmp_path_factory.mktemp("ulysses2-scripted")
    return scripted_run(tmp, ["--ulysses_degree", "2", *TINY_FLUX, "--benchmark_iters", "2",
                              "--idle_baseline_s", "0.5"], ULYSSES2_SCRIPT, nproc=2)
