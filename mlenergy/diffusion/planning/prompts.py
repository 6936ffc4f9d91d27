"""Prompts: where they come from, how they are cached, and how a run samples them.

    python -m mlenergy.diffusion.planning.prompts --batch_size B --iterations N [--seed S] [--task T]
        [--out_dir DIR]    # writes the leaderboard's shared requests file for those prompts

Where the pool comes from (a dataset, its cache, the shipped fallback): `prompt_datasets.py`,
whose names are re-exported here.
"""

from __future__ import annotations

import json
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from mlenergy.diffusion.inputs.config import ConfigError, DEFAULT_SEED
from mlenergy.diffusion.inputs.task import TEXT_TO_IMAGE, TaskName, task_named
from mlenergy.diffusion.planning.prompt_datasets import (
    DATASET_SPLITS, DEFAULT_COLUMNS, DEFAULT_DATASETS, FALLBACK_FILES, PromptPool, PromptsError,
    cache_file, check_dataset, default_cache_dir, fallback_prompts, load_pool, read_cache,
    read_local_column,
)
from mlenergy.diffusion.results.files import write_json_atomically


@dataclass(frozen=True)
class PromptSchedule:
    warmup: list[list[str]]
    measured: list[list[str]]
    wrapped: bool  # the pool had fewer prompts than the run needs, so some repeat


def read_prompts_file(path: Path) -> list[str]:
    """One prompt per line, or JSONL with a `prompt` field, or (`.json`) the leaderboard's
    shared requests file. Blank lines are skipped."""
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
    if path.suffix == ".json":
        return [prompt for batch in read_requests_file(path) for prompt in batch]
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
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


# ---------------------------------------------------------------- the ML.ENERGY v3 leaderboard

def leaderboard_batches(pool: Sequence[str], seed: int, batch_size: int,
                        num_requests: int) -> list[list[str]]:
    """The prompts ML.ENERGY benchmark 3.0.0 samples for a seed: `random.seed(seed)`, then
    `random.sample(pool, num_requests x batch_size)` cut into batches; a pool smaller than that
    is repeated in its own order instead. Same seed, batch and count: the same batches."""
    need = num_requests * batch_size
    if need > len(pool):
        chosen = (list(pool) * (need // len(pool) + 1))[:need]
    else:
        chosen = random.Random(seed).sample(list(pool), need)
    return [chosen[i:i + batch_size] for i in range(0, need, batch_size)]


def leaderboard_schedule(pool: Sequence[str], seed: int, batch_size: int, warmup_iters: int,
                         benchmark_iters: int) -> PromptSchedule:
    """Measured batches as the leaderboard samples them (its runs measured every request they
    sampled, warming up without them); warm-up takes pool prompts that are not measured."""
    measured = leaderboard_batches(pool, seed, batch_size, benchmark_iters)
    taken = {p for batch in measured for p in batch}
    rest = [p for p in pool if p not in taken] or [p for batch in measured for p in batch]
    need = warmup_iters * batch_size
    stream = [rest[i % len(rest)] for i in range(need)]
    warmup = [stream[i:i + batch_size] for i in range(0, need, batch_size)]
    return PromptSchedule(warmup=warmup, measured=measured,
                          wrapped=benchmark_iters * batch_size > len(pool))


def requests_file_name(batch_size: int, iterations: int, seed: int) -> str:
    """The leaderboard's name for its shared requests file in `run/diffusion/<task>/`."""
    return f"requests-batch-{batch_size}-iters-{iterations}-seed-{seed}.json"


def write_requests_file(path: Path, batches: list[list[str]]) -> Path:
    """The leaderboard's shared requests format: a list of {"batch_size", "prompts"}."""
    write_json_atomically(Path(path), [{"batch_size": len(b), "prompts": b} for b in batches])
    return Path(path)


def read_requests_file(path: Path) -> list[list[str]]:
    """Batches of a shared requests file (a list of {"batch_size", "prompts"}, or one)."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PromptsError(f"requests file {path} is not readable JSON ({err})") from None
    requests = [doc] if isinstance(doc, dict) else doc
    batches = []
    for number, request in enumerate(requests if isinstance(requests, list) else [None]):
        prompts = request.get("prompts") if isinstance(request, dict) else None
        if not (isinstance(prompts, list) and prompts
                and all(isinstance(p, str) and p.strip() for p in prompts)):
            raise PromptsError(f"requests file {path}: request {number} has no \"prompts\" list "
                               "of non-empty strings (expected the leaderboard's format: "
                               "[{\"batch_size\": B, \"prompts\": [...]}, ...])")
        batches.append([p.strip() for p in prompts])
    if not batches:
        raise PromptsError(f"requests file {path} holds no requests; export one with prompts "
                           "(python -m mlenergy.diffusion.planning.prompts)")
    return batches


def requests_schedule(batches: list[list[str]], batch_size: int, warmup_iters: int,
                      benchmark_iters: int, path: Path | str = "the requests file"
                      ) -> PromptSchedule:
    """Measure a requests file's batches in its order; warm up with the ones after them (or,
    where there are none, with its first)."""
    sizes = sorted({len(b) for b in batches})
    if sizes != [batch_size]:
        raise PromptsError(f"{path} holds batches of {', '.join(map(str, sizes))} prompts; run it "
                           f"with --workload.batch_size {sizes[0]}" if len(sizes) == 1 else
                           f"{path} mixes batch sizes {sizes}; one size per file")
    if len(batches) < benchmark_iters:
        raise PromptsError(f"{path} holds {len(batches)} requests but the run measures "
                           f"{benchmark_iters}; pass --benchmark_iters {len(batches)}, or export "
                           "a file with more")
    spare = batches[benchmark_iters:] or batches
    warmup = [spare[i % len(spare)] for i in range(warmup_iters)]
    return PromptSchedule(warmup=warmup, measured=batches[:benchmark_iters], wrapped=False)


def schedule_for(source, pool: Sequence[str], seed: int, batch_size: int, warmup_iters: int,
                 benchmark_iters: int) -> PromptSchedule:
    """The run's schedule: a requests file's batches as they are, the leaderboard's sampling,
    or the seeded shuffle (`--workload.prompt_sampling`). Bad input is a ConfigError."""
    from mlenergy.diffusion.inputs.config import ConfigError

    path = source.prompts_file
    try:
        if path is not None and Path(path).suffix == ".json":
            return requests_schedule(read_requests_file(path), batch_size, warmup_iters,
                                     benchmark_iters, path)
    except PromptsError as err:
        raise ConfigError(str(err)) from None
    if source.prompt_sampling == "leaderboard":
        return leaderboard_schedule(pool, seed, batch_size, warmup_iters, benchmark_iters)
    return schedule(pool, seed, batch_size, warmup_iters, benchmark_iters)


@dataclass(frozen=True)
class ExportRequests:
    """Write the ML.ENERGY leaderboard's shared requests file (requests-batch-B-iters-N-seed-S.json)
    with the prompts the leaderboard samples for a seed, from the task's dataset (through the
    prompt cache), so that another tool can be fed the prompts a run measures."""

    batch_size: int
    """Prompts per request (the run's --workload.batch_size)."""

    iterations: int
    """Requests: the run's measured iterations (the leaderboard measured 8 for images of up to
    30 steps, 4 for more, 2 for videos)."""

    seed: int = DEFAULT_SEED
    """The run's --workload.seed."""

    task: TaskName = TEXT_TO_IMAGE.name
    """Which dataset: open-image-preferences (images) or EvalCrafter (videos)."""

    out_dir: Optional[Path] = None
    """Where the file goes. Default: run/diffusion/<task>, where the leaderboard's own benchmark
    looks for it."""

    prompt_dataset: Optional[str] = None
    """Hub id or local parquet. Default: the task's dataset."""

    prompt_cache_dir: Optional[Path] = None
    """The prompt cache. Default: $MLENERGY_CACHE_DIR/prompts, else ~/.cache/mlenergy/prompts."""


def main(argv: list[str] | None = None) -> int:
    import tyro

    args = tyro.cli(ExportRequests, args=argv, use_underscores=True,
                    description=ExportRequests.__doc__)
    if args.batch_size < 1 or args.iterations < 1:
        print("error: --batch_size and --iterations must be at least 1", file=sys.stderr)
        return 2
    dataset = args.prompt_dataset or task_named(args.task).dataset
    try:
        pool = load_pool(dataset, args.prompt_cache_dir, task=args.task)
    except PromptsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if pool.source == "fallback":
        print(f"error: {dataset} is neither cached nor reachable, and the packaged fallback "
              "prompts are not the leaderboard's; run once where the hub is reachable (or copy "
              "the prompt cache) first", file=sys.stderr)
        return 2
    out_dir = args.out_dir or Path("run") / "diffusion" / args.task
    path = write_requests_file(out_dir / requests_file_name(args.batch_size, args.iterations,
                                                            args.seed),
                               leaderboard_batches(pool.prompts, args.seed, args.batch_size,
                                                   args.iterations))
    print(path)
    return 0


def draw_for_run(plan, is_main: bool, broadcast):
    """Rank 0 reads the prompt pool; every rank gets the same schedule from it (through
    `broadcast`), or the same ConfigError. Runs before logging is set up (the run directory must
    not exist yet if the reference check fails), so the line to log comes back with it, and
    whether it warns."""
    given = plan.prompts
    payload = None
    if is_main:
        try:
            pool = PromptPool(read_prompts_file(
                given.prompts_file), f"file:{given.prompts_file}") \
                if given.prompts_file is not None else load_pool(
                    given.prompt_dataset, given.prompt_cache_dir, task=plan.task.name)
            payload = (pool.prompts, pool.source, pool.note)
        except PromptsError as err:
            payload = str(err)
    payload = broadcast(payload)
    if isinstance(payload, str):
        raise ConfigError(payload)
    pool_prompts, source, fallback = payload
    schedule = schedule_for(given, pool_prompts, plan.seed, plan.batch_size,
                            plan.warmup_iters, plan.benchmark_iters)
    note = fallback or f"Prompts: {len(pool_prompts)} from {source}"
    if schedule.wrapped:
        note += " (fewer than the run needs: some repeat)"
    return schedule, source, (note, fallback is not None)


if __name__ == "__main__":
    sys.exit(main())
