"""Input pipelines. A batch is a dict of host-local numpy arrays:

- `tokens`  int32 `[batch, seq_len]`: the sequence; the model predicts each token from the
  ones before it (it shifts the input right internally, as trax does).
- `weights` float32 `[batch, seq_len]`: how much each position counts in loss and accuracy.

A training stream is an endless iterator with `get_state()` / `set_state(state)` (a small
JSON-able dict) so that a resumed run sees exactly the batches an uninterrupted one would.
"""

from reformer.data.pipeline import (
    BYTE_DATASETS,
    byte_splits,
    make_eval_batches,
    make_train_stream,
)

__all__ = ["BYTE_DATASETS", "byte_splits", "make_eval_batches", "make_train_stream"]
