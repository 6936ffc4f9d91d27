"""Tools over finished runs: the report (tables and plots) and the run checker."""
