"""Shared helpers: run the real benchmark as users do (python -m, or torchrun over gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
                  **env: str) -> subprocess.CompletedProcess:
    if nproc == 1:
        cmd = [sys.executable, "-m", "mlenergy.diffusion.benchmark", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--master_port", str(_free_port()), str(ENTRY), *args]
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


@pytest.fixture
def tiny_flux_args(tmp_path):
    def make(base: Path, *extra: str) -> list[str]:
        return with_flags([*TINY_FLUX, "--workload.base_dir", str(base)], *extra)
    return make
