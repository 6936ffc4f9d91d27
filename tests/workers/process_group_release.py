"""torchrun worker for test_shutdown: the benchmark's process-group life on 2 CPU ranks (gloo).

Joins through `runtime.init_process_group`, builds xDiT's Ulysses-2 groups as a run's engine
config does, gathers over the DiT group as every xDiT pipeline call does, then ends through
`runtime.shutdown`. With HOLD_GROUP=1 this worker keeps a reference to the DiT group, the way a
forgotten holder would. Each rank writes REPORT.<rank>: the gloo worker threads alive before and
after shutdown, and the warnings shutdown logged.
"""

import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from mlenergy.diffusion.process import runtime  # noqa: E402
from mlenergy.diffusion.process.launch import Launch  # noqa: E402


class Warnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def main() -> None:
    warnings = Warnings()
    logging.getLogger("mlenergy.diffusion").addHandler(warnings)
    ranks = runtime.init_process_group(Launch.from_environment())
    from xfuser.core.distributed import get_dit_group, initialize_model_parallel, init_dit_group

    initialize_model_parallel(sequence_parallel_degree=2, ulysses_degree=2, ring_degree=1,
                              backend="gloo")
    init_dit_group(2, backend="gloo")
    held = get_dit_group() if os.environ.get("HOLD_GROUP") == "1" else None
    gathered = [torch.empty(1) for _ in range(2)]
    torch.distributed.all_gather(gathered, torch.tensor([float(ranks.rank)]), group=get_dit_group())
    before = runtime.gloo_worker_threads()
    runtime.shutdown()
    Path(f"{os.environ['REPORT']}.{ranks.rank}").write_text(json.dumps({
        "gathered": [t.item() for t in gathered],
        "threads_before": before,
        "threads_after": runtime.gloo_worker_threads(),
        "warnings": warnings.lines,
        "held": held is not None,
    }))


if __name__ == "__main__":
    main()
