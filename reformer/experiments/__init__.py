"""Code the command-line scripts in `scripts/` share: results files, the train-then-score step
of the reproductions, compiled-step memory, kernel timing and the peers benchmark's builders.

The scripts are plain files run as `python scripts/X.py`; they import this package (installed
with `pip install -e .`), never one another. Nothing else in `reformer` imports it.
"""
