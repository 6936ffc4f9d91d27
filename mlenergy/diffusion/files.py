"""The files of a run directory, and writing them so that a reader never sees half of one,
even if the writer dies mid-way."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# Names every writer and reader of a run directory shares.
RESULTS = "results.json"
REQUESTS = "requests.json"
MODEL_INFO = "model_info.json"
DRIVER_LOG = "driver_log.txt"


def write_json_atomically(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
