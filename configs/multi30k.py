"""English-German translation on Multi30k (29,000 training and 1,014 validation sentence
pairs, ../shared/data/multi30k), the CPU-scale stand-in for the paper's WMT14 (Table 4).

python -m reformer.train --config configs/multi30k.py:cpu --workdir W
    A small reversible encoder-decoder sized for 2 CPU cores; the shared 8K SentencePiece
    vocabulary is trained into W/vocab.model when the run starts. 2,800 steps: 54 training
    minutes on 2 cores, 32.5 sacreBLEU (cased, beam 4) on the validation split
    (docs/results.md; scripts/reproduce_multi30k.py).
python -m reformer.train --config configs/multi30k.py --workdir W
    The paper's base model (6 + 6 layers, d_model 512) on the same data, for accelerators.

Full attention everywhere: the sentences are shorter than an LSH chunk, as in the paper's WMT
runs. Targets and sources of up to 64 subwords (the end id included; longer pairs would be
left out and counted: with the 8K vocabulary none of Multi30k's is).
"""

import os

from reformer.config import default_config

DATA = os.path.normpath(
    os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "multi30k"
    )
)


def get_config(variant: str = "base"):
    if variant not in ("base", "cpu"):
        raise ValueError(f"configs/multi30k.py: unknown variant {variant!r}; use 'base' or 'cpu'")
    c = default_config()
    m, d, t, o, e = c.model, c.data, c.train, c.optimizer, c.eval
    m.kind = "encoder_decoder"
    m.residual = "reversible"
    m.attention_types = ("full",)
    m.cross_attention = "full"
    m.vocab_size = 8000
    m.ff_activation = "relu"
    m.dropout = 0.1
    m.max_len = 64
    d.name = "translation"
    d.train_files = os.path.join(DATA, "train.{lang}")
    d.validation_files = os.path.join(DATA, "val.{lang}")
    d.source_lang, d.target_lang = "en", "de"
    d.seq_len = d.source_len = 64
    t.label_smoothing = 0.1
    o.name, o.b1, o.b2 = "adam", 0.9, 0.98
    o.schedule = "rsqrt"
    o.clip_norm = 0.0
    e.split = "validation"
    e.batch_size = 64  # Rows of the longest bucket; shorter buckets hold more.
    e.num_batches = 4
    if variant == "base":  # The paper's base Transformer sizes (configs/wmt14_ende.py).
        m.d_model, m.d_ff, m.n_heads, m.d_head = 512, 2048, 8, 64
        m.n_layers = m.n_encoder_layers = 6
        d.batch_tokens = 8192
        o.learning_rate, o.warmup_steps = 9.8e-4, 8000
        t.num_steps, t.log_every, t.eval_every, t.checkpoint_every = 20_000, 100, 1000, 1000
    else:
        m.d_model, m.d_ff, m.n_heads, m.d_head = 256, 1024, 4, 64
        m.n_layers = m.n_encoder_layers = 3
        d.batch_tokens = 2048
        o.learning_rate, o.warmup_steps = 1e-3, 500
        t.num_steps, t.log_every, t.eval_every, t.checkpoint_every = 2800, 50, 500, 500
    return c
