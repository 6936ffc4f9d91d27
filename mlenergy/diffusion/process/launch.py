"""The facts of how a run was launched, read from the environment once and passed on as a value,
so that a configuration can be checked for a machine other than this one (the sweep does).

The one reader of the launch environment: torchrun's rank variables, its run id and rendezvous.
Code that must know its rank before a plan exists (the console, the command line's errors) asks
the functions here; the process group is built from the plan's `Launch`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

from mlenergy.diffusion.inputs.config import ConfigError

# What torchrun tells each process it starts; none of them (or one process's values) for a plain
# `python` launch.
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE")
_ONE_PROCESS = {"RANK": 0, "WORLD_SIZE": 1, "LOCAL_RANK": 0, "LOCAL_WORLD_SIZE": 1}


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


def launched_rank() -> int:
    """This process's global rank as torchrun set it; 0 for a plain `python` launch."""
    return int(os.environ.get("RANK", "0"))


def launched_local_rank() -> int:
    """This process's rank on its node; 0 for a plain `python` launch."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rendezvous_address() -> tuple[str, int]:
    """Where the ranks' store listens (torchrun's, or the one a one-process run sets up)."""
    return os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])


def attempt_key() -> str:
    """This attempt of this run (torchrun's run id and restart count): a prefix in the store
    that no other launch shares."""
    return (f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}/"
            f"{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}")


def become_one_process_group(port: int) -> None:
    """A plain `python` launch: the variables torch's env:// rendezvous and xDiT read, for a
    group of one process listening on `port` of the loopback."""
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """The rank variables describe this launch: torchrun's four, consistent, or (a plain `python`
    launch) none of them beyond one process's values. A ConfigError of one line otherwise, for
    every rank to print (each sees its own values)."""
    environ = os.environ if environ is None else environ
    given = {name: environ[name] for name in RANK_VARIABLES if name in environ}
    if not given:
        return
    shown = " ".join(f"{name}={value}" for name, value in given.items())
    values = {}
    for name, text in given.items():
        try:
            values[name] = int(text.strip())
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a whole number; torchrun sets it: "
                              f"unset it (`env -u {name} ...`) and start the benchmark with "
                              "torchrun, or with plain python for one process") from None
    if "TORCHELASTIC_RUN_ID" not in environ:
        if all(_ONE_PROCESS[name] == value for name, value in values.items()):
            return
        world = values.get("WORLD_SIZE", 2)
        raise ConfigError(
            f"{shown} set, but this process was not started by torchrun (no TORCHELASTIC_RUN_ID; "
            "left over from another launch?): start several processes with `torchrun "
            f"--nproc_per_node={max(world, 2)} ...`, or unset them for one process (`env -u "
            + " -u ".join(given) + " python -m mlenergy.diffusion.benchmark ...`)")
    _check_torchrun_values(values, shown)


def _check_torchrun_values(values: Mapping[str, int], shown: str) -> None:
    missing = [name for name in RANK_VARIABLES if name not in values]
    fix = "relaunch with torchrun as it is, without setting these variables yourself"
    if missing:
        raise ConfigError(f"{', '.join(missing)} not set although torchrun started this process "
                          f"({shown}); {fix}")
    rank, world, local, local_world = (values[name] for name in RANK_VARIABLES)
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not one of 0..WORLD_SIZE-1 (WORLD_SIZE={world}); {fix}")
    if not 0 < local_world <= world or not 0 <= local < local_world:
        raise ConfigError(f"LOCAL_RANK={local} is not one of 0..LOCAL_WORLD_SIZE-1, or "
                          f"LOCAL_WORLD_SIZE={local_world} is not in 1..WORLD_SIZE ({shown}); "
                          f"{fix}")


@dataclass(frozen=True)
class Launch:
    world_size: int = 1
    # Processes on this node (torchrun's --nproc_per_node).
    local_world_size: int = 1
    # This process's ranks (0 where the launch is planned for another machine).
    rank: int = 0
    local_rank: int = 0
    # Started by torchrun (its rendezvous holds the group), not by plain `python`.
    torchrun: bool = False
    device_type: str = "cpu"
    visible_gpus: int = 0
    # HF_HUB_OFFLINE: pretrained weights must already be in the local cache.
    hub_offline: bool = False
    # This process's own launch (not one planned for another machine): what this machine finds
    # (a hub that does not answer) holds for the run.
    here: bool = False

    @classmethod
    def from_environment(cls) -> Launch:
        import torch

        cuda = torch.cuda.is_available()
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(world_size=world,
                   local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", str(world))),
                   rank=launched_rank(), local_rank=launched_local_rank(),
                   torchrun=launched_by_torchrun(),
                   device_type="cuda" if cuda else "cpu",
                   visible_gpus=torch.cuda.device_count() if cuda else 0,
                   hub_offline=_flag("HF_HUB_OFFLINE"), here=True)

    @classmethod
    def for_machine(cls, world_size: int, device_type: str, gpus_per_node: int | None = None
                    ) -> Launch:
        """A launch of `world_size` processes on nodes of `gpus_per_node` GPUs (all of them on one
        node when not given), as the sweep plans its points."""
        per_node = min(world_size, gpus_per_node or world_size)
        return cls(world_size=world_size, local_world_size=per_node, device_type=device_type,
                   visible_gpus=per_node if device_type == "cuda" else 0,
                   hub_offline=_flag("HF_HUB_OFFLINE"))
