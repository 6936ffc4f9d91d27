"""Prompt sources, the local cache, the offline fallback and deterministic sampling."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlenergy.diffusion.planning import prompts


def make_dataset(path, rows):
    """A parquet file with the columns of open-image-preferences-v1 (images as inline bytes)."""
    table = pa.table({
        "quality_prompt": [f"q {r}" for r in rows],
        "category": ["Art"] * len(rows),
        "subcategory": ["Painting"] * len(rows),
        "style_prompt": [f"s {r}" for r in rows],
        "prompt": rows,
        "image_quality_dev": [{"bytes": b"\x89PNG" * 64, "path": None}] * len(rows),
    })
    pq.write_table(table, path)
    return path


def test_local_parquet_reads_only_the_prompt_column_and_drops_blanks(tmp_path):
    data = make_dataset(tmp_path / "train.parquet", ["a red fox", "  ", "", "a blue bird", None])
    pool = prompts.load_pool(str(data), cache_dir=tmp_path / "cache")
    assert pool.prompts == ["a red fox", "a blue bird"]
    assert pool.source == str(data)


def test_prompts_are_cached_and_reused_without_the_source(tmp_path):
    data = make_dataset(tmp_path / "train.parquet", ["one", "two", "three"])
    first = prompts.load_pool(str(data), cache_dir=tmp_path / "cache")
    data.unlink()
    again = prompts.load_pool(str(data), cache_dir=tmp_path / "cache")
    assert again.prompts == first.prompts and "cache" in again.source
    cached = list((tmp_path / "cache").glob("*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text()) == ["one", "two", "three"]


def test_offline_without_cache_falls_back_to_shipped_prompts(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pool = prompts.load_pool("data-is-better-together/open-image-preferences-v1",
                             cache_dir=tmp_path)
    assert pool.source == "fallback" and len(pool.prompts) >= 50
    assert pool.prompts == prompts.fallback_prompts()


def test_schedule_is_deterministic_distinct_and_stable_under_warmup():
    pool = [f"prompt {i}" for i in range(100)]
    a = prompts.schedule(pool, seed=48105, batch_size=4, warmup_iters=2, benchmark_iters=3)
    b = prompts.schedule(pool, seed=48105, batch_size=4, warmup_iters=2, benchmark_iters=3)
    assert a == b
    flat_measured = [p for batch in a.measured for p in batch]
    flat_warmup = [p for batch in a.warmup for p in batch]
    assert len(flat_measured) == 12 and len(set(flat_measured)) == 12
    assert not set(flat_measured) & set(flat_warmup)
    no_warmup = prompts.schedule(pool, seed=48105, batch_size=4, warmup_iters=0, benchmark_iters=3)
    assert no_warmup.measured == a.measured and no_warmup.warmup == []
    other = prompts.schedule(pool, seed=1, batch_size=4, warmup_iters=2, benchmark_iters=3)
    assert other.measured != a.measured
    assert not a.wrapped


def test_small_pool_repeats_and_says_so():
    s = prompts.schedule(["x", "y", "z"], seed=0, batch_size=2, warmup_iters=1, benchmark_iters=2)
    assert s.wrapped and [len(b) for b in s.measured + s.warmup] == [2, 2, 2]


def test_prompts_file_text_and_jsonl(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("a cat\n\n  a dog  \n")
    assert prompts.read_prompts_file(text) == ["a cat", "a dog"]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text('{"prompt": "a cat", "id": 1}\n{"prompt": "a dog"}\n')
    assert prompts.read_prompts_file(jsonl) == ["a cat", "a dog"]


@pytest.mark.parametrize("name,content,message", [
    ("missing.txt", None, "does not exist"),
    ("empty.txt", "\n  \n", "has no prompts"),
    ("bad.jsonl", '{"prompt": "ok"}\n{not json\n', "line 2 is not valid JSON"),
    ("nofield.jsonl", '{"text": "a cat"}\n', "line 1 has no non-empty \"prompt\""),
])
def test_bad_prompts_files(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(prompts.PromptsError, match=message):
        prompts.read_prompts_file(path)
