"""results.json read back: the one reader that `report`, `check` and `quality` share.

    stored = load_results(path)     # a run directory, or its results.json
    stored.doc["energy_per_image"], stored.task, stored.run_dir

A file this benchmark did not write (another JSON document, a damaged or truncated file) is
refused with `ResultsError`, whose message is one line; `find_results` and `run_dirs` find the
runs of a tree the same way for every tool.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from mlenergy.diffusion.files import RESULTS


class ResultsError(ValueError):
    """A results.json that is missing, unreadable, or not one this benchmark wrote."""


@dataclasses.dataclass(frozen=True)
class StoredResults:
    """One run's results.json as read back: the document and where it lies."""

    path: Path
    doc: dict

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def model_id(self) -> str:
        return self.doc["model_id"]

    @property
    def batch_size(self) -> int:
        return self.doc["batch_size"]

    @property
    def task(self) -> str:
        """`task` as recorded; for results written before it was, from the run tree's layout
        (`.../diffusion/<task>/...`) or the presence of a frame count."""
        if self.doc.get("task"):
            return self.doc["task"]
        parts = self.path.parts
        for i, part in enumerate(parts[:-1]):
            if part == "diffusion" and parts[i + 1].startswith("text-to-"):
                return parts[i + 1]
        return "text-to-video" if self.doc.get("num_frames") is not None else "text-to-image"

    @property
    def iterations(self) -> list[dict]:
        found = self.doc.get("iterations")
        return [it for it in found if isinstance(it, dict)] if isinstance(found, list) else []


def load_results(path: Path) -> StoredResults:
    """The results.json of a run directory (or that file itself), checked to be this
    benchmark's: a JSON object with a model id and a positive integer batch size."""
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS
    if not path.is_file():
        raise ResultsError(f"{RESULTS} is missing")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise ResultsError(f"cannot read it ({err.strerror or err})") from None
    except ValueError as err:
        raise ResultsError(f"not valid JSON ({err})") from None
    if not isinstance(doc, dict):
        raise ResultsError(f"a JSON {type(doc).__name__}, not an object")
    if not isinstance(doc.get("model_id"), str) or "batch_size" not in doc:
        raise ResultsError("no model_id or batch_size: not a results.json of this benchmark")
    batch = doc["batch_size"]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ResultsError(f"batch_size {batch!r} is not a positive integer")
    return StoredResults(path=path, doc=doc)


def find_results(root: Path) -> list[Path]:
    """Every results.json under `root`. Directory links are followed (the toolkit's layout
    reaches runs through a `current/run` link) but each directory is visited once, so a link
    loop or a second link to the same tree does not count its runs again."""
    found, visited = [], set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames
                             if os.path.realpath(os.path.join(dirpath, d)) not in visited)
        if RESULTS in filenames:
            found.append(Path(dirpath) / RESULTS)
    return sorted(found)


def run_dirs(path: Path) -> list[Path]:
    """The run directories `path` names: itself when it holds a results.json, else every
    directory under it that holds one (a run tree); empty when there is none."""
    path = Path(path)
    if (path / RESULTS).is_file():
        return [path]
    return [found.parent for found in find_results(path)] if path.is_dir() else []
