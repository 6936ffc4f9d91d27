"""Process-group bootstrap and the rules every rank follows when something goes wrong."""

from __future__ import annotations

import gc
import logging
import socket
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.nn  # imported before any group exists: see init_process_group

from mlenergy.diffusion.process import console, lifeline, watchdog
from mlenergy.diffusion.process.launch import Launch, become_one_process_group

logger = logging.getLogger("mlenergy.diffusion")


@dataclass(frozen=True)
class Ranks:
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def is_local_main(self) -> bool:
        return self.local_rank == 0

    @property
    def node_rank(self) -> int:
        return self.rank // self.local_world_size

    @property
    def num_nodes(self) -> int:
        return self.world_size // self.local_world_size


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_process_group(launch: Launch) -> Ranks:
    """Join (or, for a plain `python` launch, create) the process group of the plan's launch,
    then xDiT's world."""
    if not launch.torchrun:
        # One process (launch.check_environment allows nothing else without torchrun).
        become_one_process_group(_free_port())
    rank, world_size = launch.rank, launch.world_size
    local_rank, local_world_size = launch.local_rank, launch.local_world_size
    if launch.device_type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device = torch.device("cpu")
        backend = "gloo"
    # Room for the ranks to start and build; xdit.engine_config tightens every group to
    # MLENERGY_COLLECTIVE_TIMEOUT_S once xDiT's groups exist.
    timeout = watchdog.startup_timeout()
    from mlenergy.diffusion.process.xfuser_compat import import_xfuser

    # Before the default group exists: `torch.distributed.nn` (imported at the top of this module
    # for that reason, and by xDiT) binds the default group into its functions' default arguments
    # when it is first imported, and a group bound there can never be let go (see `shutdown`).
    import_xfuser()
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timeout)
    # Before xDiT creates its groups, which take torch's defaults.
    watchdog.apply_to_every_group(timeout)
    from xfuser.core.distributed import init_distributed_environment

    init_distributed_environment(backend=backend)
    watchdog.start(rank, world_size)
    return Ranks(rank, world_size, local_rank, local_world_size, device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_gather_object(obj):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def shutdown() -> None:
    """End this rank's part in the run: every process group is let go while the interpreter is
    still whole. No rank waits for another here: rank 0 may still be writing the results.

    A gloo group's worker threads release each finished collective's tensors under the
    interpreter lock. A group still alive when the interpreter exits keeps those threads, and
    one that releases a tensor then is cut off inside C++ code: the rank aborts ("terminate
    called without an active exception") after a run that had finished. torch's
    `destroy_process_group` does not stop the threads of a group that xDiT, yunchang or a
    pipeline still holds; only dropping the last reference does, and it waits for them.
    """
    from mlenergy.diffusion.process.xfuser_compat import release_xdit_groups

    watchdog.stop()
    if dist.is_initialized():
        release_xdit_groups()
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()
    left = gloo_worker_threads()
    if left:
        logger.warning("%d gloo worker threads outlive the process groups: something still "
                       "holds a group, and exiting may abort this rank", left)


def gloo_worker_threads() -> int:
    """How many of this process's threads are gloo groups' workers (0 where /proc is absent)."""
    count = 0
    for task in Path("/proc/self/task").glob("*"):
        try:
            count += (task / "comm").read_text().startswith("pt_gloo_runloop")
        except OSError:  # the thread ended while being looked at
            pass
    return count


def die(rank: int, err: BaseException) -> None:
    """End this rank at once with a non-zero status, naming the rank and the cause.

    Exiting (rather than unwinding through collectives) lets torchrun see the failure and stop
    the other ranks instead of leaving them waiting on this one.
    """
    detail = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    if getattr(err, "explained", False):  # its message says what to do: one line, no traceback
        console.log_to_file_only("rank %d failed: %s\n%s", rank, err, detail, level=logging.ERROR)
        # A fault every rank finds alike (a collective check) is said once, by rank 0.
        if rank == 0 or not getattr(err, "same_on_every_rank", False):
            print(f"error: {err}", file=sys.stderr, flush=True)
    else:
        logger.error("rank %d failed: %s: %s\n%s", rank, type(err).__name__, err, detail)
        print(f"error: rank {rank} failed: {type(err).__name__}: {err}{watchdog.silent_note()}",
              file=sys.stderr, flush=True)
    logging.shutdown()
    sys.stdout.flush()
    lifeline.abrupt_exit(1)


class Stopwatch:
    """Wall time of a region on this rank (for model loading and other unmetered phases)."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
