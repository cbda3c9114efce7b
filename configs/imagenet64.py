"""Images of 64x64 pixels as sequences of 12,288 sub-pixels, the authors' imagenet64 setting
(trax `reformer_imagenet64.gin`), for accelerators.

python -m reformer.train --config configs/imagenet64.py --workdir W \\
        --config.data.image_train='DIR/Imagenet64_train_part*.npz' \\
        --config.data.image_test=DIR/Imagenet64_val_data.npz
    6 reversible layers, every one LSH attention (chunk 128 with one chunk before, 192
    buckets, 2 hashes), d_model 1024, d_ff 4096, 8 heads of 64, axial positions
    (64, 64, 3) x (384, 384, 256), vocabulary 256 (one token per sub-pixel value), tanh GELU,
    attention dropout 0.2, Adam (0.9, 0.98, 1e-9) with 8,000 warm-up steps and rsqrt decay
    (trax's 0.03125 * linear_warmup * rsqrt_decay), a batch of 8 images.
python -m reformer.train --config configs/imagenet64.py:12 --workdir W ...
    The same with 12 layers.

The data are the downsampled-ImageNet `.npz` batches (`data` rows of 12,288 channel-first
values); evaluation reports bits per dimension (`reformer.evaluate`).
"""

import math

from reformer.config import default_config


def get_config(variant: str = "6"):
    if variant not in ("6", "12"):
        raise ValueError(f"configs/imagenet64.py: unknown variant {variant!r}; use '6' or '12'")
    c = default_config()
    m, d, t, o, e = c.model, c.data, c.train, c.optimizer, c.eval
    m.vocab_size = 256
    m.d_model, m.d_ff, m.n_heads, m.d_head = 1024, 4096, 8, 64
    m.n_layers = int(variant)
    m.attention_types = ("lsh",)
    m.lsh_chunk_len, m.n_buckets, m.n_hashes = 128, 192, 2
    m.causal, m.residual = True, "reversible"
    m.positional = "axial"
    m.axial_shape, m.axial_dims = (64, 64, 3), (384, 384, 256)
    m.max_len = 12288
    m.ff_activation = "gelu"  # trax's FastGelu: the tanh approximation.
    m.dropout, m.attention_dropout = 0.0, 0.2
    d.name = "images"
    d.image_shape = (64, 64, 3)
    d.seq_len = 64 * 64 * 3
    d.image_validation = 10_000
    t.batch_size = 8
    t.num_steps = 500_000
    t.log_every, t.eval_every, t.checkpoint_every = 100, 500, 1000
    o.name, o.b1, o.b2, o.eps = "adam", 0.9, 0.98, 1e-9
    o.learning_rate = 0.03125 / math.sqrt(8000)
    o.warmup_steps = 8000
    o.schedule = "rsqrt"
    o.clip_norm = 0.0
    e.num_batches, e.batch_size = 8, 8
    return c
