"""Prompt datasets: a hub dataset's prompt column or a local parquet's, read once and cached as
a small JSON file that later runs use offline, and the prompts shipped with the package.

The reference dataset stores images inline (about 11.6 GB of parquet for 8.7k short strings), so
only its prompt column is read. With no cache and no network a run of the task's own dataset
falls back to the shipped prompts and says so (a warning in the log, `prompt_source: "fallback"`
in the results); any other dataset that cannot be read is refused before anything loads
(`check_dataset`, called while planning).
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Sequence

from mlenergy.diffusion.inputs.task import TASKS, TEXT_TO_IMAGE
from mlenergy.diffusion.results.files import write_json_atomically

logger = logging.getLogger("mlenergy.diffusion.planning.prompts")

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
    # Why the shipped prompts stand in for the dataset (source "fallback"), for the log.
    note: str | None = None


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
FALLBACK_FILES = {name: task.fallback_prompts_file for name, task in TASKS.items()}


def fallback_prompts(task: str = TEXT_TO_IMAGE.name) -> list[str]:
    text = resources.files("mlenergy.diffusion").joinpath(FALLBACK_FILES[task]).read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _cache_path(cache_dir: Path, dataset: str, split: str, column: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", dataset.strip("/"))
    return cache_dir / f"{slug}.{split}.{column}.json"


def _offline() -> bool:
    return any(os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")
               for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _hub_reachable() -> bool:
    """A quick look before `datasets` spends tens of seconds retrying an unreachable hub."""
    from mlenergy.diffusion.models import hub

    return not _offline() and hub.reachable()


def _clean(values: Sequence[object]) -> list[str]:
    return [v.strip() for v in values if isinstance(v, str) and v.strip()]


def _read_hub_column(dataset: str, split: str, column: str) -> list[str]:
    import datasets

    # Streaming with a column projection reads only the prompt column, not the inline images.
    ds = datasets.load_dataset(dataset, split=split, streaming=True, columns=[column])
    return _clean(row[column] for row in ds)


def read_local_column(path: Path, column: str) -> list[str]:
    """The non-blank strings of `column` in a local parquet file, or in the parquet files under
    a directory (only that column is read); PromptsError, in one line, when there are none."""
    import pyarrow
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path.is_dir() else [path]
    if not files:
        raise PromptsError(f"prompt dataset {path} holds no .parquet files; pass a parquet file "
                           "or a directory of them to --workload.prompt_dataset")
    values: list = []
    for file in files:
        try:
            if not file.is_file():
                raise OSError("not a regular file")
            names = pq.read_schema(file).names
            if column in names:
                values += pq.read_table(file, columns=[column]).column(column).to_pylist()
        except (OSError, pyarrow.ArrowException) as err:
            raise PromptsError(f"prompt dataset {file} is not a readable parquet file ("
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__})"
                               "; pass a parquet file to --workload.prompt_dataset") from None
        if column not in names:
            raise PromptsError(f"prompt dataset {file} has no {column!r} column (it has: "
                               f"{', '.join(names) or 'none'}); the prompts must be in a column "
                               f"named {column!r}")
    prompts = _clean(values)
    if not prompts:
        raise PromptsError(f"prompt dataset {path} has no non-empty {column!r} strings")
    return prompts


# The prompt column of a dataset that is not in DATASET_SPLITS (a local parquet), per task.
DEFAULT_COLUMNS = {name: task.prompt_column for name, task in TASKS.items()}
# Each task's own dataset: the only one that may fall back to the shipped prompts.
DEFAULT_DATASETS = {name: task.dataset for name, task in TASKS.items()}
_DATASET_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def cache_file(dataset: str, cache_dir: Path | None = None, column: str | None = None,
               task: str = TEXT_TO_IMAGE.name) -> Path:
    """Where the prompts of `dataset` are cached."""
    split, default_column = DATASET_SPLITS.get(dataset, ("train", DEFAULT_COLUMNS[task]))
    return _cache_path(cache_dir or default_cache_dir(), dataset, split, column or default_column)


def check_dataset(dataset: str, cache_dir: Path | None = None, task: str = TEXT_TO_IMAGE.name,
                  here: bool = True) -> list[str] | None:
    """Before anything loads: the prompts where they are at hand (the cache, a local parquet),
    None for a hub dataset the run fetches (or, the task's own, falls back from). PromptsError
    for a source that cannot be read, and for another dataset that is neither cached nor
    reachable (from here, or offline: a run planned for another machine may reach it there)."""
    if not dataset.strip():
        raise PromptsError("--workload.prompt_dataset is empty; give a Hugging Face dataset id "
                           "(ORG/NAME), or a local parquet file or directory")
    cache = cache_file(dataset, cache_dir, task=task)
    if cache.exists():
        return read_cache(cache)
    if Path(dataset).exists():
        return read_local_column(Path(dataset), DATASET_SPLITS.get(
            dataset, ("", DEFAULT_COLUMNS[task]))[1])
    if not _DATASET_ID.fullmatch(dataset) or dataset.endswith(".parquet"):
        raise PromptsError(f"prompt dataset {dataset!r} is neither an existing local parquet "
                           "file or directory nor a Hugging Face dataset id (ORG/NAME); check "
                           "--workload.prompt_dataset")
    if dataset != DEFAULT_DATASETS[task] and (here or _offline()) and not _hub_reachable():
        raise PromptsError(_unreadable(dataset, task, f"is not in the prompt cache ({cache}) and "
                                                      f"the hub {_why_unreachable()}"))
    return None


def _why_unreachable() -> str:
    return "is off (HF_HUB_OFFLINE or HF_DATASETS_OFFLINE)" if _offline() \
        else "cannot be reached"


def _unreadable(dataset: str, task: str, why: str) -> str:
    return (f"prompt dataset {dataset} {why}; check the id, run once where the hub answers (or "
            "copy the prompt cache), or pass --workload.prompts_file (only the task's own "
            f"dataset, {DEFAULT_DATASETS[task]}, falls back to the prompts shipped with the "
            "package)")


def load_pool(dataset: str, cache_dir: Path | None = None, column: str | None = None,
              task: str = TEXT_TO_IMAGE.name) -> PromptPool:
    """Prompts of a dataset (hub id or local parquet), through the local cache."""
    split, default_column = DATASET_SPLITS.get(dataset, ("train", DEFAULT_COLUMNS[task]))
    column = column or default_column
    cache = cache_file(dataset, cache_dir, column, task)
    if cache.exists():
        return PromptPool(read_cache(cache), f"{dataset} (cache {cache})")
    if Path(dataset).exists():
        prompts = read_local_column(Path(dataset), column)
    else:
        check_dataset(dataset, cache_dir, task)
        why = None if _hub_reachable() else f"is not cached at {cache} and the hub " \
            f"{_why_unreachable()}"
        try:
            prompts = _read_hub_column(dataset, split, column) if why is None else []
        except Exception as err:  # network, schema or hub errors, told apart by the fallback
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            why = f"could not be read from the hub ({first})"
        if why is not None and dataset != DEFAULT_DATASETS.get(task):
            raise PromptsError(_unreadable(dataset, task, why))
        if why is not None:
            shipped = fallback_prompts(task)
            return PromptPool(shipped, "fallback", f"Prompt dataset {dataset} {why}: using the "
                              f"{len(shipped)} prompts shipped with the package instead "
                              "(prompt_source \"fallback\" in results.json)")
        if not prompts:
            raise PromptsError(f"prompt dataset {dataset} has no non-empty {column!r} values")
    try:
        write_json_atomically(cache, prompts)
    except OSError as err:
        logger.warning("Could not cache the prompts at %s (%s): the next run reads %s again",
                       cache, err, dataset)
    return PromptPool(prompts, dataset)
