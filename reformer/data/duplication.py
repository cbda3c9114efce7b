"""The paper's synthetic duplication task (Section 2.1, Table 2).

Each sequence is `0 w 0 w`: a separator 0, a word `w` of `word_len` symbols drawn uniformly
from `1..vocab_size-1`, the separator again and the same word. Only the second copy is
scored (its weights are 1, all others 0): predicting it needs attention back `word_len + 1`
positions, which local attention cannot do. Paper: vocab 128, |w| = 511, length 1024.
"""

from __future__ import annotations

import numpy as np


def duplication_batch(
    seed: int, index: int, batch_size: int, word_len: int, vocab_size: int
) -> dict[str, np.ndarray]:
    """The `index`-th global batch of the stream with this seed; a pure function of its args."""
    rng = np.random.default_rng([seed, index])
    w_BxW = rng.integers(1, vocab_size, size=(batch_size, word_len), dtype=np.int32)
    sep_Bx1 = np.zeros((batch_size, 1), np.int32)
    tokens = np.concatenate([sep_Bx1, w_BxW, sep_Bx1, w_BxW], axis=1)
    weights = np.zeros(tokens.shape, np.float32)
    weights[:, word_len + 2 :] = 1.0
    return {"tokens": tokens, "weights": weights}


class DuplicationStream:
    """Endless, seeded stream of duplication batches; its position is one integer.

    Every host draws the same global batch and keeps its own rows, so the data a run sees
    does not depend on how many hosts it runs on.
    """

    def __init__(
        self,
        *,
        seed: int,
        batch_size: int,
        word_len: int,
        vocab_size: int,
        process_index: int = 0,
        process_count: int = 1,
        rows: slice | None = None,
    ):
        """`rows` (of the global batch) overrides the block given by the process index."""
        if batch_size % process_count:
            raise ValueError(
                f"batch_size {batch_size} is not divisible by the number of "
                f"processes {process_count}"
            )
        self.seed, self.batch_size = seed, batch_size
        self.word_len, self.vocab_size = word_len, vocab_size
        per_host = batch_size // process_count
        self._rows = (
            rows
            if rows is not None
            else slice(process_index * per_host, (process_index + 1) * per_host)
        )
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = duplication_batch(
            self.seed, self.index, self.batch_size, self.word_len, self.vocab_size
        )
        self.index += 1
        return {k: v[self._rows] for k, v in batch.items()}

    def get_state(self) -> dict:
        return {"name": "duplication", "seed": self.seed, "index": self.index}

    def set_state(self, state: dict) -> None:
        if state.get("name") != "duplication" or state.get("seed") != self.seed:
            raise ValueError(
                f"data state {state} does not belong to a duplication stream with seed {self.seed}"
            )
        self.index = int(state["index"])
