"""Which runs of a campaign shared a node, so that a reader can exclude or compare them.

The sweep (packed local points, and every Slurm task) sets MLENERGY_SHARED_NODE_RUNS to a
directory for this node, `OUT_DIR/shared_node_runs/<host>`, and keeps one small JSON record per
point there: its run directory, the devices it was given, and when it started and finished
(Unix time; `finished` is null while it runs). A run then shared the node with every record whose
interval overlaps its own window, its own record aside: `runs_sharing_node` answers that, and
returns None when the variable is not set (a run not started by a sweep: unknown, not "alone").

Only the campaign's own points are recorded; other jobs on a shared node show up in the run's
GPU exclusivity check, which looks at the run's own GPUs.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from mlenergy.diffusion.results import files
from mlenergy.diffusion.results.sections import Section

ENV = "MLENERGY_SHARED_NODE_RUNS"


@dataclass
class SharingRecord(Section):
    """One point's record on its node, as the sweep writes it; in results.json
    `shared_node_runs` for every other point whose interval overlapped the run's window."""

    run_dir: str
    host: str | None
    devices: list[str] | None
    pid: int | None
    slurm_job: str | None
    started: float | None
    finished: float | None
    # The run directories of the points measured by the same process, one after another.
    same_process: list[str]

    @classmethod
    def of(cls, doc: dict) -> SharingRecord:
        """From a record file (those of earlier versions lack `same_process`)."""
        return cls(run_dir=doc.get("run_dir"), host=doc.get("host"), devices=doc.get("devices"),
                   pid=doc.get("pid"), slurm_job=doc.get("slurm_job"),
                   started=doc.get("started"), finished=doc.get("finished"),
                   same_process=list(doc.get("same_process") or ()))


def node_dir(root: Path) -> Path:
    """This node's record directory under a campaign's `shared_node_runs` root."""
    return Path(root).resolve() / socket.gethostname().split(".")[0]


def _record_path(directory: Path, run_dir: Path) -> Path:
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return Path(directory) / f"{digest}.json"


def register(directory: Path, run_dir: Path, devices: list[str] | None, pid: int,
             same_process: list[Path] = ()) -> Path:
    """Record that the point of `run_dir` starts now on this node. `same_process`: the run
    directories of every point one process measures one after another (with this one); they
    never share the node with each other."""
    path = _record_path(directory, run_dir)
    files.write_json_atomically(path, {
        "run_dir": str(Path(run_dir).resolve()), "host": socket.gethostname(),
        "devices": devices, "pid": pid, "slurm_job": _slurm_job(),
        "started": time.time(), "finished": None,
        "same_process": [str(Path(d).resolve()) for d in same_process],
    })
    return path


def finish(record: Path) -> None:
    try:
        doc = json.loads(record.read_text())
    except (OSError, ValueError):
        return
    doc["finished"] = time.time()
    files.write_json_atomically(record, doc)


def _slurm_job() -> str | None:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def _running(doc: dict) -> bool:
    """An unfinished record of this host whose launcher is gone was left by a killed runner."""
    if doc.get("host") != socket.gethostname() or not isinstance(doc.get("pid"), int):
        return True
    try:
        os.kill(doc["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def runs_sharing_node(run_dir: Path, start: float, end: float,
                      directory: Path | None = None) -> list[SharingRecord] | None:
    """The records of other points on this node whose interval overlaps [start, end]; None when
    the run was not started by a sweep."""
    directory = directory or os.environ.get(ENV)
    if not directory:
        return None
    own = str(Path(run_dir).resolve())
    found = []
    for path in sorted(Path(directory).glob("*.json")):
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(doc, dict) or doc.get("run_dir") == own \
                or own in (doc.get("same_process") or ()):
            continue
        finished = doc.get("finished")
        if finished is None and not _running(doc):
            continue
        if doc.get("started", float("inf")) <= end and (finished is None or finished >= start):
            found.append(SharingRecord.of(doc))
    return found
