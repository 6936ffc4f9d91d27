"""The facts of how a run was launched, read from the environment once and passed on as a value,
so that a configuration can be checked for a machine other than this one (the sweep does)."""

from __future__ import annotations

import os
from dataclasses import dataclass


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes")


@dataclass(frozen=True)
class Launch:
    world_size: int = 1
    # Processes on this node (torchrun's --nproc_per_node).
    local_world_size: int = 1
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
