"""The paper's synthetic duplication task (Section 2.1, Table 2), and two encoder tasks of
the same shape.

`duplication` (language model): each sequence is `0 w 0 w`: a separator 0, a word `w` of
`word_len` symbols drawn uniformly from `1..vocab_size-1`, the separator again and the same
word. Only the second copy is scored (its weights are 1, all others 0): predicting it needs
attention back `word_len + 1` positions, which local attention cannot do. Paper: vocab 128,
|w| = 511, length 1024.

The encoder tasks use 0 as padding (an encoder never attends to it), 1 as the separator and
lengths that vary: each sequence is `1 w 1 w` with |w| drawn from `word_len // 2 ..
word_len`, each copy padded with 0 to `word_len` (two fields of a record), so a symbol's
counterpart is always `word_len + 1` positions away and the padding sits inside the sequence
as well as at its end.

- `masked_duplication` (masked LM): at each index of the word, with probability 1/4 the
  first copy's symbol is replaced by the mask id `vocab_size - 1`, with probability 1/4 the
  second copy's (never both); the model predicts the original symbols at the masked
  positions (`tokens`, weight 1) from `inputs`. Each answer is `word_len + 1` positions away, in
  either direction. Symbols are `2..vocab_size-2`.
- `match` (classifier): `1 w 1 v`; the label is 1 when `v = w` and 0 when `v` is `w` with
  each symbol changed with probability 1/4 (at least one). Half the sequences of a batch are
  of each label in expectation; telling them apart needs each symbol's counterpart `word_len + 1`
  positions away. Symbols are `2..vocab_size-1`.
"""

from __future__ import annotations

import functools

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


MASK_RATE = 0.25  # per word index and copy (masked_duplication), per symbol (match)


def _encoder_words(rng, batch_size: int, word_len: int, low: int, high: int, longest: int = 0):
    """Words `[B, word_len]` of symbols in `[low, high)` and each row's length, drawn from
    `word_len // 2 .. longest` (0: `word_len`)."""
    longest = longest or word_len
    lengths_B = rng.integers(max(1, word_len // 2), longest + 1, size=batch_size)
    w_BxW = rng.integers(low, high, size=(batch_size, word_len), dtype=np.int32)
    return w_BxW, lengths_B


def _two_copies(first_BxW, second_BxW, lengths_B) -> np.ndarray:
    """`1 first 1 second` per row, each copy cut to the row's length and padded with 0 to
    `word_len`, so the second copy starts at `word_len + 1` in every row."""
    batch, word_len = first_BxW.shape
    real_BxW = np.arange(word_len)[None, :] < np.asarray(lengths_B)[:, None]
    sep_Bx1 = np.ones((batch, 1), np.int32)
    first_BxW, second_BxW = (np.where(real_BxW, a, 0) for a in (first_BxW, second_BxW))
    return np.concatenate([sep_Bx1, first_BxW, sep_Bx1, second_BxW], axis=1).astype(np.int32)


def masked_duplication_batch(
    seed: int, index: int, batch_size: int, word_len: int, vocab_size: int
) -> dict[str, np.ndarray]:
    """The `index`-th global batch of `masked_duplication` (see the module docstring)."""
    rng = np.random.default_rng([seed, index, 1])
    mask_id = vocab_size - 1
    w_BxW, lengths_B = _encoder_words(rng, batch_size, word_len, 2, mask_id)
    u_BxW = rng.random((batch_size, word_len))
    hide_first, hide_second = u_BxW < MASK_RATE, (u_BxW >= MASK_RATE) & (u_BxW < 2 * MASK_RATE)
    tokens = _two_copies(w_BxW, w_BxW, lengths_B)
    hidden = _two_copies(hide_first, hide_second, lengths_B).astype(bool)
    hidden[tokens == 1] = False  # the separators
    inputs = np.where(hidden, mask_id, tokens).astype(np.int32)
    return {"inputs": inputs, "tokens": tokens, "weights": hidden.astype(np.float32)}


def match_batch(
    seed: int, index: int, batch_size: int, word_len: int, vocab_size: int
) -> dict[str, np.ndarray]:
    """The `index`-th global batch of `match` (see the module docstring)."""
    rng = np.random.default_rng([seed, index, 2])
    w_BxW, lengths_B = _encoder_words(rng, batch_size, word_len, 2, vocab_size)
    labels_B = rng.integers(0, 2, size=batch_size).astype(np.int32)
    change_BxW = rng.random((batch_size, word_len)) < MASK_RATE
    change_BxW[np.arange(batch_size), rng.integers(0, lengths_B)] = True  # at least one
    change_BxW &= (labels_B == 0)[:, None]
    shift_BxW = rng.integers(1, vocab_size - 2, size=w_BxW.shape)  # another symbol
    v_BxW = np.where(change_BxW, (w_BxW - 2 + shift_BxW) % (vocab_size - 2) + 2, w_BxW)
    return {
        "tokens": _two_copies(w_BxW, v_BxW.astype(np.int32), lengths_B),
        "labels": labels_B,
        "weights": np.ones((batch_size,), np.float32),
    }


def reverse_batch(
    seed: int, index: int, batch_size: int, word_len: int, vocab_size: int, target_len: int = 0
) -> dict[str, np.ndarray]:
    """The `index`-th global batch of `reverse` (encoder-decoder): the source (`inputs`,
    `word_len` = `data.source_len` tokens) is the start id 1 and a word `w` of |w| symbols
    in `2..vocab_size-1`, |w| drawn from `word_len // 2 .. word_len - 1`, padded with 0 at
    its start; the target (`tokens`, `target_len` = `data.seq_len` tokens) is `w` reversed
    with every symbol shifted to the next one (the last to 2), then the end id 1, padded with
    0 at its end and weighted 1 up to the end id. Target position t reads source position
    `word_len - 1 - t`, whatever |w|: the end id's position reads the start id."""
    rng = np.random.default_rng([seed, index, 3])
    w_BxW, lengths_B = _encoder_words(rng, batch_size, word_len, 2, vocab_size, word_len - 1)
    shifted_BxW = (w_BxW - 1) % (vocab_size - 2) + 2
    inputs = np.zeros((batch_size, word_len), np.int32)
    tokens = np.zeros((batch_size, target_len), np.int32)
    for b, n in enumerate(lengths_B):
        inputs[b, word_len - n - 1 :] = np.concatenate([[1], w_BxW[b, :n]])
        tokens[b, : n + 1] = np.concatenate([shifted_BxW[b, :n][::-1], [1]])
    return {
        "inputs": inputs,
        "tokens": tokens,
        "weights": (np.arange(target_len)[None] <= lengths_B[:, None]).astype(np.float32),
    }


TASKS = {
    "duplication": duplication_batch,
    "masked_duplication": masked_duplication_batch,
    "match": match_batch,
    "reverse": reverse_batch,
}


class DuplicationStream:
    """Endless, seeded stream of the batches of `task` (a key of `TASKS`); its position is one
    integer.

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
        rows: slice | None = None,
        task: str = "duplication",
        target_len: int = 0,
    ):
        """`rows`: this host's rows of each global batch (None: all of them)."""
        self.task, self._batch = task, TASKS[task]
        if task == "reverse":
            self._batch = functools.partial(reverse_batch, target_len=target_len)
        self.seed, self.batch_size = seed, batch_size
        self.word_len, self.vocab_size = word_len, vocab_size
        self._rows = rows if rows is not None else slice(0, batch_size)
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = self._batch(self.seed, self.index, self.batch_size, self.word_len, self.vocab_size)
        self.index += 1
        return {k: v[self._rows] for k, v in batch.items()}

    def get_state(self) -> dict:
        return {"name": self.task, "seed": self.seed, "index": self.index}

    def set_state(self, state: dict) -> None:
        if state.get("name") != self.task or state.get("seed") != self.seed:
            raise ValueError(
                f"data state {state} does not belong to a {self.task} stream with seed {self.seed}"
            )
        self.index = int(state["index"])
