"""Every default decided and every input checked before anything loads: the run plan, performance
options, limits, prompts, and the points one process measures."""
