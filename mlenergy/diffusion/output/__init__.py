"""What a run leaves behind: its typed record, the numbers derived from it, results.json written,
the summary table, the power plot, the run directory and its lock, model_info.json, and the
facts of the run (environment, provenance, startup)."""
