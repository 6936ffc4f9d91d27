"""torchrun worker for test_ring_compile: xDiT's ring attention (ring degree 2 over gloo) run
eagerly and under torch.compile(fullgraph=True) after `make_ring_attention_traceable`, with
torch's CPU flash-attention kernel standing in for the GPU one. Rank 0 writes a JSON report."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from mlenergy.diffusion.process import runtime  # noqa: E402
from mlenergy.diffusion.process.xfuser_compat import import_xfuser, make_ring_attention_traceable  # noqa: E402,E501


def cpu_flash(query, key, value, dropout_p=0.0, is_causal=False, attention_kwargs=None):
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        query, key, value, dropout_p, is_causal)


def main() -> None:
    import_xfuser()  # before the default group: see runtime.init_process_group
    dist.init_process_group("gloo")
    from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel

    init_distributed_environment(backend="gloo")
    initialize_model_parallel(sequence_parallel_degree=2, ring_degree=2, ulysses_degree=1,
                              backend="gloo")
    import xfuser.model_executor.layers.usp as usp

    changed = [make_ring_attention_traceable(), make_ring_attention_traceable()]
    attention = usp.concat_joint_tensors_decorator(cpu_flash)

    def block(q, k, v):
        return usp.ring_attn(attention, q * 0.5, k, v) + 1.0

    torch.manual_seed(dist.get_rank())
    q, k, v = (torch.randn(1, 4, 32, 16) for _ in range(3))
    eager = block(q, k, v)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="eager", fullgraph=True)(q, k, v)
    # The whole sequence on one process, for the ring's answer to be checked against.
    gathered = [[torch.empty_like(t) for _ in range(2)] for t in (k, v)]
    dist.all_gather(gathered[0], k)
    dist.all_gather(gathered[1], v)
    full = torch.nn.functional.scaled_dot_product_attention(
        q * 0.5, torch.cat(gathered[0], dim=2), torch.cat(gathered[1], dim=2)) + 1.0
    rank = dist.get_rank()
    # Every group let go before the interpreter exits (a gloo group left alive aborted this
    # worker now and then at exit: tests/test_shutdown.py). The compiled ring keeps one: torch's
    # trace of it holds the ring group past torch._dynamo.reset(), so this worker leaves without
    # the interpreter's teardown, once its report is written.
    runtime.shutdown()
    if rank == 0:
        Path(os.environ["REPORT"]).write_text(json.dumps({
            "changed": changed,
            "version_answer": usp.version_at_least(torch.__version__, "2.6.0"),
            "compiled_vs_eager": (compiled - eager).abs().max().item(),
            "eager_vs_full_attention": (eager - full).abs().max().item(),
        }))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
