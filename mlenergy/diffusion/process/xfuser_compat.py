"""Importing and running xDiT (`xfuser` 0.7.0) without CUDA, for CPU test machines.

xfuser refuses to import on a CPU-only torch, always asks for NCCL, and turns its Ulysses path
off when no GPU is present. On a machine without CUDA this module fixes exactly those points
before the rest of xfuser is imported, so that Ulysses runs over gloo between CPU processes with
xDiT's own code. With CUDA it does nothing but import xfuser. The fixes touch xfuser internals,
which is why pyproject pins xfuser exactly.
"""

from __future__ import annotations

import importlib.util
import sys
import types

import torch

_done = False


def import_xfuser():
    """Import xfuser, made runnable on CPU when no CUDA device exists; its log lines then go
    where ours go (it prints every level on stdout)."""
    global _done
    if _done:
        import xfuser

        return xfuser
    xfuser = _import_xfuser_here()
    from mlenergy.diffusion.process import console

    console.route_xdit_logs()
    _done = True
    return xfuser


def _import_xfuser_here():
    if torch.cuda.is_available():
        import xfuser

        return xfuser

    # xfuser/envs.py decides the device and backend while the package is imported. Load it on its
    # own under a placeholder package, fix it, then import the real package around it.
    spec = importlib.util.find_spec("xfuser")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("xfuser is not installed")
    placeholder = types.ModuleType("xfuser")
    placeholder.__path__ = list(spec.submodule_search_locations)
    sys.modules["xfuser"] = placeholder
    try:
        import xfuser.envs as envs
    finally:
        del sys.modules["xfuser"]

    envs.get_device_version = lambda: None  # read as CUDA version 0.0 instead of raising
    envs.get_torch_distributed_backend = lambda: "gloo"
    # xfuser copies this flag into several modules at import time; yunchang's Ulysses all-to-all
    # works over gloo.
    envs.PACKAGES_CHECKER.packages_info["has_long_ctx_attn"] = True

    import xfuser
    import xfuser.model_executor.layers.usp as usp
    import yunchang.globals

    usp.PROCESS_GROUP = yunchang.globals.PROCESS_GROUP
    return xfuser


def make_ring_attention_traceable() -> bool:
    """Let torch.compile trace xDiT's ring attention (ring > 1, alone or with Ulysses); returns
    whether this call changed anything.

    xfuser 0.7.0's `usp.ring_attn` asks `version_at_least(torch.__version__, "2.6.0")` at every
    call, inside every compiled transformer block. Under dynamo that runs packaging's
    `Version()`, which there reaches `raise InvalidVersion(...) from None`, and torch 2.11's
    dynamo cannot trace a `raise ... from` of an exception class defined outside builtins:
    `InternalTorchDynamoError: AttributeError: 'UserDefinedExceptionObjectVariable' object has
    no attribute 'call_setattr'` (seen on 4x H200, 2026-11-28, packaging 26.3). The answer
    cannot change within a process, so it is computed once here and `ring_attn`, which looks
    the name up in its module at every call, gets it as a constant; the rest of ring attention
    (torch's `_templated_ring_attention`) traces into the compiled graph.
    """
    import xfuser.model_executor.layers.usp as usp
    from xfuser.compat import version_at_least

    if getattr(usp.version_at_least, "_mlenergy_constant", False):
        return False
    answers = {"2.6.0": version_at_least(torch.__version__, "2.6.0")}

    def this_torch_at_least(installed: str, floor: str) -> bool:
        return answers[floor]

    this_torch_at_least._mlenergy_constant = True
    usp.version_at_least = this_torch_at_least
    return True


def release_xdit_groups() -> None:
    """Drop every process group xDiT and yunchang hold, and destroy them (the default group
    last), so that nothing outlives `runtime.shutdown`. Does nothing when xfuser was never
    imported."""
    if "xfuser.core.distributed" not in sys.modules:
        return
    from xfuser.core.distributed import parallel_state
    from xfuser.core.distributed.parallel_state import (
        destroy_distributed_environment,
        destroy_model_parallel,
    )

    destroy_model_parallel()
    # destroy_model_parallel leaves the DiT group, a bare process group rather than a coordinator
    # (xfuser 0.7.0); every pipeline call gathers over it.
    if parallel_state._DIT is not None:
        torch.distributed.destroy_process_group(parallel_state._DIT)
        parallel_state._DIT = None
    destroy_distributed_environment()
    yunchang_globals = sys.modules.get("yunchang.globals")
    if yunchang_globals is not None:
        yunchang_globals.PROCESS_GROUP.ULYSSES_PG = None
        yunchang_globals.PROCESS_GROUP.RING_PG = None
