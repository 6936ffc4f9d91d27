"""A rank that starts a poller as Zeus's monitors do (a `spawn`ed daemon process that loops until
told to stop), then ends abruptly: MODE exit ends it as a failed rank ends (`runtime.die`:
os._exit after the last words), MODE kill as a launcher or the OOM killer ends it (SIGKILL).

    python rank_with_poller.py MODE BOUND PIDFILE

BOUND 1 starts the poller the way `probes.gpus` starts Zeus's; 0 starts it plainly. The poller's
PID goes to PIDFILE. The poller runs `time.sleep`: Zeus's own pollers need NVML, which a machine
without GPUs has not; how long a poller lives does not depend on what it polls.
"""

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import time
from pathlib import Path


def main() -> None:
    from mlenergy.diffusion.probes.gpus import _spawned_pollers_bound_to_this_rank

    mode, bound, pidfile = sys.argv[1], sys.argv[2] == "1", Path(sys.argv[3])
    ctx = mp.get_context("spawn")
    with _spawned_pollers_bound_to_this_rank() if bound else contextlib.nullcontext():
        poller = ctx.Process(target=time.sleep, args=(600,), daemon=True, name="poller")
        poller.start()
    pidfile.write_text(str(poller.pid))
    print("poller started", flush=True)
    time.sleep(1.0)  # the poller is past its start-up, polling
    if mode == "exit":
        os._exit(1)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
