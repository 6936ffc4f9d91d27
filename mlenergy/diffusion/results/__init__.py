"""results.json and a run directory's files as data: file names and atomic writes, the one reader
of results.json and its typed sections, statistics, and outputs compared with a reference run.
Nothing from the run itself."""
