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
    """Import xfuser, made runnable on CPU when no CUDA device exists."""
    global _done
    if _done or torch.cuda.is_available():
        _done = True
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
    _done = True
    return xfuser


def keep_ring_attention_eager() -> bool:
    """Leave xDiT's ring attention out of whatever torch.compile traces; returns whether this
    call changed anything.

    xfuser 0.7.0 runs ring attention (ring > 1, alone or with Ulysses) through
    `xfuser.model_executor.layers.usp.ring_attn`, which parses torch's version with
    `packaging` and drives torch's experimental `_templated_ring_attention` from inside the
    attention processor, i.e. inside every compiled transformer block. Dynamo in torch 2.11
    dies tracing that region (`InternalTorchDynamoError: AttributeError:
    'UserDefinedExceptionObjectVariable' object has no attribute 'call_setattr'`: its
    `raise ... from ...` handling lacks that method for exception classes defined outside
    builtins). Running only this call eagerly costs one graph break per attention layer and
    keeps everything else (projections, norms, MLPs, the Ulysses all-to-alls) compiled.
    `USP` looks `ring_attn` up in its module at every call, so replacing it there suffices.
    """
    import xfuser.model_executor.layers.usp as usp

    if getattr(usp.ring_attn, "_mlenergy_eager", False):
        return False
    eager = torch.compiler.disable(usp.ring_attn)
    eager._mlenergy_eager = True
    usp.ring_attn = eager
    return True


def make_ring_attention_traceable() -> bool:
    """Let torch.compile trace xDiT's ring attention by answering its torch-version check with
    a constant. `ring_attn` asks `version_at_least(torch.__version__, "2.6.0")` at every call;
    under dynamo that runs packaging's `Version()`, whose `raise InvalidVersion(...) from None`
    is what torch 2.11's dynamo cannot trace. Returns whether this call changed anything."""
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
