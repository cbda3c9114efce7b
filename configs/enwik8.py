"""Byte-level enwik8 with the authors' Reformer (trax `reformer_enwik8` setup).

python -m reformer.train --config configs/enwik8.py --workdir W [--config.data.path=enwik8.zip]
    12 layers [local, local, lsh, local] x 3, d_model 1024, d_ff 4096, 8 heads of 128,
    LSH chunk 256 with 512 buckets and 2 hashes (evaluated with 4), local chunk 128
    with one chunk before, axial positions (128, 512) with dims (256, 768), dropout
    0.2, Adam with 2000 warmup steps and rsqrt decay, 65536-byte sequences, a batch of
    8 sequences (on fewer than 8 devices add --config.train.grad_accum_steps=8/devices).
python -m reformer.train --config configs/enwik8.py:1m --workdir W
    The same model on sequences of 1,048,576 bytes (axial grid 1024 x 1024, 8,192 buckets,
    bfloat16 products, batch 1); see docs/benchmarks.md for the memory of its step.
python -m reformer.train --config configs/enwik8.py:cpu \
        --config.data.path=../shared/data/enwik8_prefix_4154399 --workdir W
    A 4-layer model (local and LSH layers alternating, reversible, d_model 128, 512-byte
    sequences) that trains in under 30 minutes on 2 CPU cores. With
    --config.model.attention_types="('full',)" --config.model.residual=standard it is the
    same-size Transformer baseline (scripts/reproduce_enwik8_prefix.py runs both).
"""

import math

from reformer.config import default_config


def get_config(variant: str = "paper"):
    c = default_config()
    m = c.model
    m.vocab_size = 258  # Bytes + 2: 0 = padding, 1 = end (google/reformer-enwik8).
    m.causal = True
    m.residual = "reversible"
    m.positional = "axial"
    if variant in ("paper", "1m"):
        m.d_model, m.d_ff, m.n_heads, m.d_head = 1024, 4096, 8, 128
        m.n_layers = 12
        m.attention_types = ("local", "local", "lsh", "local")
        m.lsh_chunk_len, m.n_buckets, m.n_hashes = 256, 512, 2
        m.local_chunk_len = 128
        m.axial_shape, m.axial_dims = (128, 512), (256, 768)
        # Position-wise work (feed-forward, LayerNorms, projections, dropout, the loss) in
        # chunks of 2048 positions (docs/benchmarks.md has the step's memory).
        m.position_chunk_size = 2048
        m.loss_chunk_size = 2048
        # LSH layers two heads at a time (recomputed in the backward pass).
        m.lsh_heads_per_step = 2
        m.dropout = 0.2
        m.attention_dropout = 0.2
        m.max_len = 65536
        c.data.seq_len = 65536
        c.train.num_steps = 200_000
        c.train.batch_size = 8
        c.train.log_every = 100
        c.train.eval_every = 5000
        c.train.checkpoint_every = 1000
        c.optimizer.name = "adam"
        # trax: 0.03125 * linear_warmup * rsqrt_decay, i.e. a peak of 0.03125 / sqrt(2000).
        c.optimizer.learning_rate = 0.03125 / math.sqrt(2000)
        c.optimizer.warmup_steps = 2000
        c.optimizer.schedule = "rsqrt"
        c.optimizer.b1, c.optimizer.b2 = 0.9, 0.98
        c.eval.n_hashes = 4
        c.eval.batch_size = 8
        c.eval.num_batches = 8
        if variant == "1m":
            # One sequence of 2^20 bytes per step: axial positions over a 1024 x 1024 grid,
            # two buckets per LSH chunk, bfloat16 products, the loss in 64K-position chunks.
            m.axial_shape = (1024, 1024)
            m.max_len = c.data.seq_len = 1 << 20
            m.n_buckets = 2 * c.data.seq_len // m.lsh_chunk_len
            m.dtype = "bfloat16"
            m.loss_chunk_size = 65536
            c.train.batch_size = c.eval.batch_size = 1
    elif variant == "cpu":
        # Sized for at most 30 minutes on 2 CPU cores on the 4.15 MB enwik8 prefix in
        # ../shared/data (about 0.85 s per step as configured, 1.0 s with full attention).
        m.d_model, m.d_ff, m.n_heads, m.d_head = 128, 512, 4, 32
        m.n_layers = 4
        m.attention_types = ("local", "lsh")
        m.lsh_chunk_len, m.n_buckets, m.n_hashes = 64, 0, 2  # 16 buckets at 512 bytes.
        m.local_chunk_len = 128
        m.axial_shape, m.axial_dims = (16, 32), (64, 64)
        m.position_chunk_size = 0
        m.dropout = 0.0
        m.attention_dropout = 0.0
        m.max_len = 512
        c.data.seq_len = 512
        c.train.num_steps = 1500
        c.train.batch_size = 8
        c.train.log_every = 50
        c.train.eval_every = 500
        c.train.checkpoint_every = 500
        c.optimizer.name = "adam"
        c.optimizer.learning_rate = 3e-3
        c.optimizer.warmup_steps = 150
        c.optimizer.schedule = "rsqrt"
        c.eval.n_hashes = 4
        c.eval.batch_size = 16
        c.eval.num_batches = 4
    else:
        raise ValueError(
            f"configs/enwik8.py: unknown variant {variant!r}; use 'paper' (default), '1m' or 'cpu'"
        )
    c.data.name = "enwik8"
    return c
