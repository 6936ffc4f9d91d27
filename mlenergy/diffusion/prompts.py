"""Prompts: where they come from, how they are cached, and how a run samples them.

The reference dataset stores images inline (about 11.6 GB of parquet for 8.7k short strings), so
only its prompt column is read, once, and cached as a small JSON file that later runs use
offline. With no cache and no network the run falls back to prompts shipped in the package and
says so (`prompt_source` in the results).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence
from urllib.parse import urlparse

from mlenergy.diffusion.files import write_json_atomically

logger = logging.getLogger(__name__)

DATASET_SPLITS = {
    "data-is-better-together/open-image-preferences-v1": ("cleaned", "prompt"),
    "RaphaelLiu/EvalCrafter_T2V_Dataset": ("train", "text"),
}


class PromptsError(ValueError):
    pass


@dataclass(frozen=True)
class PromptPool:
    prompts: list[str]
    source: str


@dataclass(frozen=True)
class PromptSchedule:
    warmup: list[list[str]]
    measured: list[list[str]]
    wrapped: bool  # the pool had fewer prompts than the run needs, so some repeat


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per line, or JSONL with a `prompt` field. Blank lines are skipped."""
    path = Path(path)
    if not path.exists():
        raise PromptsError(f"prompts file {path} does not exist; pass an existing file to "
                           "--workload.prompts_file")
    if path.is_dir():
        raise PromptsError(f"prompts file {path} is a directory; pass a file (one prompt a "
                           "line, or JSONL) to --workload.prompts_file")
    if not path.is_file():
        # Reading a FIFO or a device would block or never end.
        raise PromptsError(f"prompts file {path} is not a regular file (a FIFO or device?); "
                           "pass a file to --workload.prompts_file")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    except UnicodeDecodeError:
        raise PromptsError(f"prompts file {path} is not UTF-8 text") from None
    lines = [line for line in lines if line]
    if not lines:
        raise PromptsError(f"prompts file {path} has no prompts; write one prompt per line")
    if path.suffix != ".jsonl" and not _is_json_object(lines[0]):
        # A text prompt may well start with "{": only a first line that is a JSON object
        # makes the file JSONL.
        return lines
    prompts = []
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PromptsError(f"prompts file {path} line {number} is not valid JSON ({err.msg}); "
                               "use one JSON object per line with a \"prompt\" field") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str) \
                or not record["prompt"].strip():
            raise PromptsError(f"prompts file {path} line {number} has no non-empty \"prompt\" "
                               "string field")
        prompts.append(record["prompt"].strip())
    return prompts


def _is_json_object(line: str) -> bool:
    if not line.startswith("{"):
        return False
    try:
        return isinstance(json.loads(line), dict)
    except json.JSONDecodeError:
        return False


def read_cache(path: Path) -> list[str]:
    """The prompts of a cache file; a damaged cache is refused in one line naming it."""
    fix = f"delete {path} and the next run rebuilds it"
    try:
        prompts = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise PromptsError(f"prompt cache {path} is damaged ({err}); {fix}") from None
    if not isinstance(prompts, list):
        raise PromptsError(f"prompt cache {path} is damaged (holds a JSON "
                           f"{type(prompts).__name__}, not a list of prompts); {fix}")
    if not prompts:
        raise PromptsError(f"prompt cache {path} is damaged (an empty list); {fix}")
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()),
               None)
    if bad is not None:
        raise PromptsError(f"prompt cache {path} is damaged (entry {bad} is not a non-empty "
                           f"string); {fix}")
    return prompts


def default_cache_dir() -> Path:
    env = os.environ.get("MLENERGY_CACHE_DIR")
    base = Path(env) if env else Path.home() / ".cache" / "mlenergy"
    return base / "prompts"


# Prompts shipped with the package for runs that cannot reach their dataset, per task.
FALLBACK_FILES = {
    "text-to-image": "data/fallback_prompts.txt",
    "text-to-video": "data/fallback_video_prompts.txt",
}


def fallback_prompts(task: str = "text-to-image") -> list[str]:
    text = resources.files("mlenergy.diffusion").joinpath(FALLBACK_FILES[task]).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _cache_path(cache_dir: Path, dataset: str, split: str, column: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", dataset.strip("/"))
    return cache_dir / f"{slug}.{split}.{column}.json"


def _hub_reachable(timeout: float = 3.0) -> bool:
    """A quick look before `datasets` spends tens of seconds retrying an unreachable hub."""
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _clean(values: Sequence[object]) -> list[str]:
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _read_column(dataset: str, split: str, column: str) -> list[str]:
    import datasets

    local = Path(dataset)
    if local.exists():
        files = sorted(str(p) for p in local.rglob("*.parquet")) if local.is_dir() else [str(local)]
        if not files:
            raise PromptsError(f"{dataset} holds no parquet files")
        ds = datasets.load_dataset("parquet", data_files=files, split="train", columns=[column])
        return _clean(ds[column])
    # Streaming with a column projection reads only the prompt column, not the inline images.
    ds = datasets.load_dataset(dataset, split=split, streaming=True, columns=[column])
    return _clean(row[column] for row in ds)


# The prompt column of a dataset that is not in DATASET_SPLITS (a local parquet), per task.
DEFAULT_COLUMNS = {"text-to-image": "prompt", "text-to-video": "text"}


def cache_file(dataset: str, cache_dir: Path | None = None, column: str | None = None,
               task: str = "text-to-image") -> Path:
    """Where the prompts of `dataset` are cached."""
    split, default_column = DATASET_SPLITS.get(dataset, ("train", DEFAULT_COLUMNS[task]))
    return _cache_path(cache_dir or default_cache_dir(), dataset, split, column or default_column)


def load_pool(dataset: str, cache_dir: Path | None = None, column: str | None = None,
              task: str = "text-to-image") -> PromptPool:
    """Prompts of a dataset (hub id or local parquet), through the local cache."""
    split, default_column = DATASET_SPLITS.get(dataset, ("train", DEFAULT_COLUMNS[task]))
    column = column or default_column
    cache = cache_file(dataset, cache_dir, column, task)
    if cache.exists():
        return PromptPool(read_cache(cache), f"{dataset} (cache {cache})")
    local = Path(dataset).exists()
    if not local and not _hub_reachable():
        logger.warning("Prompt dataset %s is not cached at %s and the hub is unreachable; "
                       "using the %d prompts shipped with the package.", dataset, cache,
                       len(fallback_prompts(task)))
        return PromptPool(fallback_prompts(task), "fallback")
    try:
        prompts = _read_column(dataset, split, column)
    except PromptsError:
        raise
    except Exception as err:  # network, schema, or hub errors: the fallback is still a valid run
        if local:
            raise PromptsError(f"could not read column {column!r} from {dataset}: {err}") from None
        logger.warning("Could not fetch prompts from %s (%s); using the prompts shipped with "
                       "the package.", dataset, err)
        return PromptPool(fallback_prompts(task), "fallback")
    if not prompts:
        raise PromptsError(f"{dataset} has no non-empty {column!r} values")
    write_json_atomically(cache, prompts)
    return PromptPool(prompts, dataset)


def schedule(pool: Sequence[str], seed: int, batch_size: int, warmup_iters: int,
             benchmark_iters: int) -> PromptSchedule:
    """Deterministic in the seed alone: the same measured prompts for every model and rank.

    One seeded shuffle of the pool; measured iterations take the first prompts, warm-up the next
    ones, so changing the warm-up count never changes what is measured. A pool smaller than the
    run repeats (and says so).
    """
    order = list(pool)
    random.Random(seed).shuffle(order)
    need = (benchmark_iters + warmup_iters) * batch_size
    wrapped = need > len(order)
    stream = [order[i % len(order)] for i in range(need)]
    batches = [stream[i:i + batch_size] for i in range(0, need, batch_size)]
    return PromptSchedule(warmup=batches[benchmark_iters:], measured=batches[:benchmark_iters],
                          wrapped=wrapped)
