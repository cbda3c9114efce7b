"""Builds the training stream and the evaluation batches named by `config.data`."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from reformer.data import images, text, translation
from reformer.data.duplication import TASKS, DuplicationStream

BYTE_DATASETS = ("enwik8", "text")


@functools.lru_cache(maxsize=4)
def _byte_splits(name: str, path: str, data_dir: str) -> dict[str, np.ndarray]:
    if name == "enwik8":
        from reformer.data import enwik8  # TFDS is imported only for enwik8.

        return enwik8.load_splits(path, data_dir)
    return text.split_bytes(text.read_file(path))


def byte_splits(config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
    """The train / validation / test bytes of a byte-level dataset (read once per process)."""
    d = config.data
    return _byte_splits(d.name, d.path, d.tfds_dir)


def _host_rows(rows: slice | None, batch_size: int) -> slice:
    """`rows`, or this process's block of a global batch of `batch_size` rows."""
    if rows is not None:
        return rows
    index, count = jax.process_index(), jax.process_count()
    if batch_size % count:
        raise ValueError(
            f"batch_size {batch_size} is not divisible by the number of processes {count}"
        )
    local = batch_size // count
    return slice(index * local, (index + 1) * local)


def _task_lengths(config: ml_collections.ConfigDict) -> dict:
    """The lengths a synthetic task's stream takes from `config.data`."""
    d = config.data
    if d.name == "reverse":
        return {"word_len": d.source_len, "target_len": d.seq_len}
    return {"word_len": d.word_len}


def _rows_fn(rows_fn):
    """`global rows -> this host's slice`: `rows_fn` (e.g. `sharding.process_rows` of the
    mesh), or the process index's block."""
    index, count = jax.process_index(), jax.process_count()
    return rows_fn or (lambda n: slice(index * n // count, (index + 1) * n // count))


def make_train_stream(
    config: ml_collections.ConfigDict,
    *,
    rows: slice | None = None,
    rows_fn=None,
    workdir: str | None = None,
):
    """The endless training stream of this host's rows of each global batch (`rows`, e.g.
    `sharding.process_rows`, or the block of the process index). Translation batches vary in
    size: their rows come from `rows_fn(global rows)`, and the vocabulary from `workdir`."""
    if config.data.name == "translation":
        return translation.train_stream(config, workdir, jax.device_count(), _rows_fn(rows_fn))
    rows = _host_rows(rows, config.train.batch_size)
    if config.data.name in TASKS:
        return DuplicationStream(
            task=config.data.name,
            seed=config.train.seed,
            batch_size=config.train.batch_size,
            **_task_lengths(config),
            vocab_size=config.model.vocab_size,
            rows=rows,
        )
    if config.data.name == "images":
        return images.train_stream(config, rows)
    if config.data.name in BYTE_DATASETS:
        return text.CropStream(
            byte_splits(config)["train"],
            seq_len=config.data.seq_len,
            seed=config.train.seed,
            batch_size=config.train.batch_size,
            rows=rows,
        )
    raise ValueError(f"config.data.name: unknown dataset {config.data.name!r}")


def make_eval_batches(
    config: ml_collections.ConfigDict,
    *,
    rows: slice | None = None,
    whole_split: bool = False,
    rows_fn=None,
    workdir: str | None = None,
) -> Sequence[dict[str, np.ndarray]]:
    """Evaluation batches (this host's rows), the same at every evaluation.

    Synthetic tasks: `eval.num_batches` batches drawn with `eval.seed`. Byte data: windows over
    `eval.split` that score each byte once (`text.eval_windows`); images: every image of
    `eval.split` once, in order (a sequence of batches built as they are read). Either way the
    first `eval.num_batches` batches, or all with `whole_split=True`.
    """
    e = config.eval
    if config.data.name == "translation":
        return translation.eval_batches(
            config,
            workdir,
            jax.device_count(),
            _rows_fn(rows_fn),
            0 if whole_split else e.num_batches,
        )
    rows = _host_rows(rows, e.batch_size)
    if config.data.name in TASKS:
        stream = DuplicationStream(
            task=config.data.name,
            seed=e.seed,
            batch_size=e.batch_size,
            **_task_lengths(config),
            vocab_size=config.model.vocab_size,
            rows=rows,
        )
        return list(itertools.islice(stream, e.num_batches))
    if config.data.name == "images":  # Built when read: a split may not fit in memory as ids.
        return images.eval_batches(config, rows, 0 if whole_split else e.num_batches)
    if config.data.name in BYTE_DATASETS:
        split = byte_splits(config)[e.split]
        if not len(split):
            raise text.DataError(
                f"config.eval.split: the {e.split} split of {config.data.path or 'enwik8'} is "
                "empty (the file is too short to give it a byte); nothing to evaluate on"
            )
        windows = text.eval_windows(split, config.data.seq_len, e.stride)
        return text.eval_batches(windows, e.batch_size, 0 if whole_split else e.num_batches, rows)
    raise ValueError(f"config.data.name: unknown dataset {config.data.name!r}")
