"""Speed benchmarks: the job's padding-free training and batched evaluation against the notebooks' ways, and what
the default preset costs. `python -m benchmarks --help`; results go to benchmarks/results.json."""
