"""The files of a run directory, and writing them so that a reader never sees half of one,
even if the writer dies mid-way."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

# Names every writer and reader of a run directory shares.
RESULTS = "results.json"
REQUESTS = "requests.json"
MODEL_INFO = "model_info.json"
DRIVER_LOG = "driver_log.txt"
# --profile_steps: rank 0's table of the kernels that took the most GPU time.
PROFILE_TABLE = "profile.txt"


def _create_private_temp(directory: Path, name: str) -> tuple[int, Path]:
    """A new file beside `name`, created with mode 0666 so that the kernel applies the user's
    umask (0644 under umask 022): results on a cluster file system must be readable by the
    colleagues and pipelines the umask allows. tempfile.mkstemp would force 0600."""
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file in {directory}")


def write_text_atomically(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_private_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomically(path: Path, data) -> None:
    # NaN and Infinity are not JSON: a reader would choke on them or take them at face value. A
    # number that is not finite must be refused or written as null before this; dumping first
    # refuses it before any file is touched.
    text = json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False)
    write_text_atomically(path, text + "\n")
