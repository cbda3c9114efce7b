"""The peers benchmark (`scripts/bench_peers.py`): one Reformer train step built in this
project and in other implementations, each timed in its own worker process.

`common` holds the settings every implementation shares; `ours`, `huggingface`,
`lucidrains` and `trax_lm` build one implementation's step each; `worker` serves a built step
over a line protocol, `parent` drives the workers of one length and `report` writes the table
and plot. Only the standard library is imported at the top of these modules, so the trax
worker runs in its own virtual environment with this package on its PYTHONPATH.
"""
