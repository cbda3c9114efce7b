"""Bidirectional encoders on synthetic tasks whose answers need a token far away
(reformer/data/duplication.py): sequences `1 w 1 w` of varying length, padded with 0.

python -m reformer.train --config configs/encoder.py:masked_lm --workdir W
    A masked LM: a quarter of the symbols of each copy are masked (never both copies of
    one); the model predicts them from the other copy, |w| + 1 positions away. Reversible
    layers alternating local and LSH attention (one chunk before and one after).
python -m reformer.train --config configs/encoder.py:classifier --workdir W
    A classifier: is the second copy the same as the first, or changed in some symbols?
    One label per sequence from the mean of the encoder's outputs.
"""

from reformer.config import default_config


def get_config(variant: str = "masked_lm"):
    if variant not in ("masked_lm", "classifier"):
        raise ValueError(
            f"configs/encoder.py: unknown variant {variant!r}; use 'masked_lm' or 'classifier'"
        )
    c = default_config()
    m = c.model
    m.kind = variant
    m.vocab_size = 16
    m.d_model = 64
    m.d_ff = 128
    m.n_heads = 2
    m.d_head = 32
    m.n_layers = 2
    m.attention_types = ("local", "lsh")
    m.local_chunk_len = 16
    m.lsh_chunk_len = 16
    m.n_hashes = 2
    m.residual = "reversible"
    m.max_len = 128
    c.data.name = "masked_duplication" if variant == "masked_lm" else "match"
    c.data.word_len = 63
    c.data.seq_len = 128
    c.train.num_steps = 2000
    c.train.batch_size = 16
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 100
    c.eval.num_batches = 4
    c.eval.batch_size = 32
    c.eval.n_hashes = 4
    return c
