"""Builds the training stream and the evaluation batches named by `config.data`."""

from __future__ import annotations

import itertools

import jax
import ml_collections
import numpy as np

from reformer.data.duplication import DuplicationStream


def _stream(
    config: ml_collections.ConfigDict,
    seed: int,
    batch_size: int,
    process_index: int | None,
    process_count: int | None,
):
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if config.data.name == "duplication":
        return DuplicationStream(
            seed=seed,
            batch_size=batch_size,
            word_len=config.data.word_len,
            vocab_size=config.model.vocab_size,
            process_index=pi,
            process_count=pc,
        )
    raise ValueError(f"config.data.name: unknown dataset {config.data.name!r}")


def make_train_stream(
    config: ml_collections.ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
):
    """The endless training stream of this host's rows of each global batch."""
    return _stream(config, config.train.seed, config.train.batch_size, process_index, process_count)


def make_eval_batches(
    config: ml_collections.ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """A fixed list of evaluation batches (this host's rows), the same at every evaluation."""
    stream = _stream(config, config.eval.seed, config.eval.batch_size, process_index, process_count)
    return list(itertools.islice(stream, config.eval.num_batches))
