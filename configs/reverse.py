"""An encoder-decoder on a synthetic task: the source's symbols reversed and shifted
(reformer/data/duplication.py, `reverse`). Sources of a start id and 64..127 symbols
(left-padded to 128),
targets of 65..128 tokens with the end id (padded to 144), so every target token needs the
source token at the mirrored position, up to 127 positions away.

python -m reformer.train --config configs/reverse.py --workdir W
    Reversible encoder (local and LSH layers) and decoder (local self-attention), LSH
    cross-attention: decoder queries and encoder keys hashed in one shared-QK space.
python -m reformer.train --config configs/reverse.py:full --workdir W
    The same with full cross-attention (the authors' encoder-decoder).
python -m reformer.sample --config configs/reverse.py --workdir W --source_ids 5,6,7
    The target of a source, decoded greedily (or with --beam_size 4) through the caches.
"""

from reformer.config import default_config


def get_config(variant: str = "lsh"):
    if variant not in ("lsh", "full"):
        raise ValueError(f"configs/reverse.py: unknown variant {variant!r}; use 'lsh' or 'full'")
    c = default_config()
    m = c.model
    m.kind = "encoder_decoder"
    m.cross_attention = variant
    m.vocab_size = 16
    m.d_model = 64
    m.d_ff = 128
    m.n_heads = 2
    m.d_head = 32
    m.attention_types = ("local",)  # The decoder's self-attention.
    m.n_layers = 2
    m.encoder_attention_types = ("local", "lsh")
    m.n_encoder_layers = 2
    m.local_chunk_len = 16
    m.lsh_chunk_len = 16
    m.n_hashes = 2
    m.residual = "reversible"
    m.max_len = 144
    c.data.name = "reverse"
    c.data.source_len = 128
    c.data.seq_len = 144
    c.train.num_steps = 3000
    c.train.batch_size = 16
    c.train.log_every = 50
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 100
    c.eval.num_batches = 4
    c.eval.batch_size = 32
    c.eval.n_hashes = 8  # Evaluated (and decoded) with more hashes than trained with.
    return c
