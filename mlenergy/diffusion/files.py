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


def write_json_atomically(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            # NaN and Infinity are not JSON: a reader would choke on them or take them at face
            # value. A number that is not finite must be refused or written as null before this.
            f.write(json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
