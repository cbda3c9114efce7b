"""The paper's synthetic duplication task (Section 2.1, Table 2): sequences 0 w 0 w.

python -m reformer.train --config configs/duplication.py --workdir W
    The Reformer (reversible layers, LSH attention with shared query-keys, 2 hashes;
    evaluated with 4) on a shorter task (|w| = 127, length 256) sized to train on 2 CPU
    cores in about 8 minutes; accuracy on the second copy is reported in the README.
python -m reformer.train --config configs/duplication.py:full --workdir W
    The same task and widths with the full-attention Transformer baseline (not reversible).
python -m reformer.train --config configs/duplication.py:paper --workdir W
    The paper's setting: symbols 1..127, |w| = 511 (length 1024), 1 layer,
    d_model = d_ff = 256, 4 heads, 150K steps (for accelerators), full attention.
"""

from reformer.config import default_config


def get_config(variant: str = "cpu"):
    c = default_config()
    c.model.vocab_size = 128
    c.model.attention_types = ("full",)
    c.model.causal = True
    c.train.seed = 0
    if variant in ("cpu", "full"):
        c.model.d_model = 128
        c.model.d_ff = 256
        c.model.n_heads = 4
        c.model.d_head = 32
        c.model.n_layers = 1
        c.model.max_len = 256
        c.model.lsh_chunk_len = 32  # With LSH: 16 buckets; a query sees 2 chunks of 32.
        c.data.word_len = 127
        c.data.seq_len = 256
        c.train.num_steps = 1500
        c.train.batch_size = 32
        c.train.log_every = 100
        c.train.eval_every = 250
        c.train.checkpoint_every = 500
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 200
        c.eval.num_batches = 4
        c.eval.batch_size = 64
        if variant == "cpu":  # The Reformer: reversible, LSH (shared-QK), 2 hashes.
            c.model.attention_types = ("lsh",)
            c.model.residual = "reversible"
            c.model.n_hashes = 2
            c.eval.n_hashes = 4  # As the paper evaluates: more hashes than in training.
    elif variant == "paper":
        c.model.d_model = 256
        c.model.d_ff = 256
        c.model.n_heads = 4
        c.model.d_head = 64
        c.model.n_layers = 1
        c.model.max_len = 1024
        c.model.lsh_chunk_len = 64  # With LSH: 32 buckets; a query sees 2 chunks of 64.
        c.data.word_len = 511
        c.data.seq_len = 1024
        c.train.num_steps = 150_000
        c.train.batch_size = 16
        c.train.log_every = 500
        c.train.eval_every = 5000
        c.train.checkpoint_every = 5000
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 1000
        c.eval.num_batches = 8
        c.eval.batch_size = 32
    else:
        raise ValueError(
            f"configs/duplication.py: unknown variant {variant!r}; "
            "use 'cpu' (default), 'full' or 'paper'"
        )
    return c
