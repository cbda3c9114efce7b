"""CIFAR-10 images (32x32, from ../shared/data/cifar10_jpeg) as sequences of 3,072
sub-pixels: the imagenet64 experiment at a size 2 CPU cores train.

python -m reformer.train --config configs/cifar10.py:cpu --workdir W
    A small reversible model whose every layer is LSH attention (as the authors' imagenet64
    model), axial positions (32, 32, 3), one token per sub-pixel value. Trained on the
    45,000 first images of train.tar; the last 5,000 are the validation split (scored during
    training); test.tar is scored once at the end:
python -m reformer.evaluate --config configs/cifar10.py:cpu --workdir W --config.eval.split=test
    Bits per dimension over every sub-pixel of the 8,000 test images.
python -m reformer.sample --config configs/cifar10.py:cpu --workdir W --out W/samples.png
    Unconditional samples and completions of test images, as PNG.

The images are JPEG files (lossy, smoother than CIFAR-10's originals: read
../shared/data/PROVENANCE.md), so bits per dimension here are not comparable with published
CIFAR-10 results; scripts/image_baselines.py scores PNG and xz on the same pixels.
"""

import os

from reformer.config import default_config

DATA = os.path.normpath(
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "cifar10_jpeg"
    )
)


def get_config(variant: str = "cpu"):
    if variant not in ("cpu", "local_lsh"):
        raise ValueError(
            f"configs/cifar10.py: unknown variant {variant!r}; use 'cpu' or 'local_lsh'"
        )
    c = default_config()
    m, d, t, o, e = c.model, c.data, c.train, c.optimizer, c.eval
    m.vocab_size = 256
    m.d_model, m.d_ff, m.n_heads, m.d_head = 128, 512, 4, 32
    m.n_layers = 4
    m.attention_types = ("lsh",) if variant == "cpu" else ("local", "lsh")
    m.lsh_chunk_len, m.local_chunk_len, m.n_hashes = 128, 128, 2
    m.n_buckets = 2 * 3072 // 128  # One bucket per half chunk, as the authors' 192 at 12,288.
    m.causal, m.residual = True, "reversible"
    m.positional = "axial"
    m.axial_shape, m.axial_dims = (32, 32, 3), (48, 48, 32)
    m.max_len = 3072
    d.name = "images"
    d.image_shape = (32, 32, 3)
    d.seq_len = 32 * 32 * 3
    d.image_train = os.path.join(DATA, "train.tar")
    d.image_test = os.path.join(DATA, "test.tar")
    d.image_validation = 5000  # The last 500 of each class (train.tar is sorted by class).
    d.image_validation_per_folder = True
    t.batch_size = 4  # More updates per minute learn faster here than larger batches.
    t.num_steps = 1750  # About 60 minutes on 2 CPU cores.
    t.log_every, t.eval_every, t.checkpoint_every = 50, 250, 250
    o.name, o.b1, o.b2 = "adam", 0.9, 0.98
    o.learning_rate, o.warmup_steps, o.schedule = 6e-3, 100, "rsqrt"
    e.split = "validation"
    e.num_batches, e.batch_size = 4, 16
    return c
