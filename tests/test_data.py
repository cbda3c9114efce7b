"""The duplication task: structure, weights, determinism, resumable position."""

import jax
import numpy as np
import pytest

from reformer.data import make_eval_batches, make_train_stream
from reformer.data.duplication import DuplicationStream, duplication_batch
from tests.conftest import load_config


def test_shapes_structure_and_weights():
    b = duplication_batch(seed=0, index=0, batch_size=5, word_len=7, vocab_size=11)
    tokens, weights = b["tokens"], b["weights"]
    assert tokens.shape == weights.shape == (5, 16)
    assert tokens.dtype == np.int32 and weights.dtype == np.float32
    w = tokens[:, 1:8]
    np.testing.assert_array_equal(tokens[:, 0], 0)
    np.testing.assert_array_equal(tokens[:, 8], 0)
    np.testing.assert_array_equal(tokens[:, 9:], w)  # 0 w 0 w
    assert w.min() >= 1 and w.max() <= 10  # Symbols 1..V-1; 0 only as the separator.
    # Only the second copy is scored.
    np.testing.assert_array_equal(weights[:, 9:], 1.0)
    np.testing.assert_array_equal(weights[:, :9], 0.0)


def test_symbols_cover_the_vocabulary_uniformly():
    b = duplication_batch(seed=1, index=0, batch_size=64, word_len=255, vocab_size=8)
    counts = np.bincount(b["tokens"][:, 1:256].ravel(), minlength=8)
    assert counts[0] == 0
    freq = counts[1:] / counts[1:].sum()
    np.testing.assert_allclose(freq, 1 / 7, atol=0.01)


def test_deterministic_and_distinct():
    a = duplication_batch(3, 5, 4, 9, 32)["tokens"]
    np.testing.assert_array_equal(a, duplication_batch(3, 5, 4, 9, 32)["tokens"])
    assert not np.array_equal(a, duplication_batch(3, 6, 4, 9, 32)["tokens"])
    assert not np.array_equal(a, duplication_batch(4, 5, 4, 9, 32)["tokens"])


def test_stream_position_saves_and_restores():
    kwargs = dict(seed=7, batch_size=4, word_len=5, vocab_size=16)
    uninterrupted = DuplicationStream(**kwargs)
    expected = [next(uninterrupted)["tokens"] for _ in range(6)]
    first = DuplicationStream(**kwargs)
    for _ in range(3):
        next(first)
    state = first.get_state()
    resumed = DuplicationStream(**kwargs)
    resumed.set_state(state)
    for want in expected[3:]:
        np.testing.assert_array_equal(next(resumed)["tokens"], want)


def test_state_from_another_seed_is_refused():
    stream = DuplicationStream(seed=1, batch_size=2, word_len=3, vocab_size=8)
    with pytest.raises(ValueError, match="seed"):
        stream.set_state({"name": "duplication", "seed": 2, "index": 4})


def test_hosts_split_the_same_global_batch(monkeypatch):
    """Each of 4 processes (`jax.process_index` / `process_count` patched) reads its block of
    the one global batch."""
    config = load_config("tiny")
    config.train.batch_size = 8
    whole = next(make_train_stream(config))["tokens"]
    monkeypatch.setattr(jax, "process_count", lambda: 4)
    parts = []
    for i in range(4):
        monkeypatch.setattr(jax, "process_index", lambda i=i: i)
        parts.append(next(make_train_stream(config))["tokens"])
    np.testing.assert_array_equal(np.concatenate(parts), whole)
    config.train.batch_size = 6
    with pytest.raises(ValueError, match="not divisible by the number of processes 4"):
        make_train_stream(config)


def test_pipeline_from_config():
    config = load_config("tiny")
    stream = make_train_stream(config)
    batch = next(stream)
    assert batch["tokens"].shape == (config.train.batch_size, config.data.seq_len)
    evals = make_eval_batches(config)
    assert len(evals) == config.eval.num_batches
    # Evaluation data is fixed and differs from the training data.
    np.testing.assert_array_equal(evals[0]["tokens"], make_eval_batches(config)[0]["tokens"])
    assert not np.array_equal(evals[0]["tokens"], batch["tokens"])
