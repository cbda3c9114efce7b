"""English-German translation on WMT14 (the paper's Table 4), set as the authors ran it
(trax's reformer_wmt_ende.gin and reformer_wmt_ende_big.gin). For accelerators; not run here.

python -m reformer.train --config configs/wmt14_ende.py --workdir W \\
    --config.data.tfds_dir=/path/to/tensorflow_datasets
    The reversible base model: 6 + 6 layers, d_model 512, d_ff 2048, 8 heads, ReLU, dropout
    0.1, label smoothing 0.1; Adam (0.9, 0.98, eps 1e-9); trax's learning rate
    0.088 * linear warm-up over 8,000 steps * rsqrt decay, i.e. a peak of
    0.088 / sqrt(8000) = 9.8e-4 at step 8,000 (here optimizer.learning_rate is the peak).
    100,000 steps: Table 4's "reversible base, 100K steps" row (27.6 BLEU on newstest2014).
python -m reformer.train --config configs/wmt14_ende.py:big --workdir W ...
    d_model 1024, d_ff 4096, 16 heads, dropout 0.3, trax's constant 0.0625 (peak 7.0e-4).
python -m reformer.evaluate --config configs/wmt14_ende.py --workdir W \\
    --config.eval.split=test
    newstest2014, beam 4, alpha 0.6, sacreBLEU cased and uncased.

Data: TFDS `wmt14_translate/de-en` (train: europarl, commoncrawl, news commentary, ~4.5M
pairs; validation: newstest2013 and newsdev2014; test: newstest2014), prepared as
`array_record` files into `data.tfds_dir` the first time (it needs a network then, and no
TensorFlow); every later run, and every host of a pod, reads the prepared directory. One
shared SentencePiece vocabulary of 32,768 pieces (the authors used T2T's wmt32k subwords,
33,300 ids) is trained on a sample of 2M sentences of the training pairs into W/vocab.model when
training starts. Pairs with more than 256 subwords on a side (the end id included) are left
out of training (trax: wmt_preprocess.max_length = 256); every pair of an evaluated split is
translated (a longer source cut to data.source_len, its end id kept).

Batches: trax's batcher put 256 sentences per device in the length-32 bucket (inputs and
targets counted together; shorter buckets more sentences, longer ones fewer) on the paper's
8 devices: about 8 x 256 x 32 = 65,536 tokens a step, half of them on each side, so
`data.batch_tokens` (padded positions a side) is 32,768. Full attention everywhere, as in the
paper's WMT runs (the sentences are shorter than an LSH chunk).
"""

from reformer.config import default_config


def get_config(variant: str = "base"):
    if variant not in ("base", "big"):
        raise ValueError(f"configs/wmt14_ende.py: unknown variant {variant!r}; use 'base' or 'big'")
    c = default_config()
    m, d, t, o, e = c.model, c.data, c.train, c.optimizer, c.eval
    m.kind = "encoder_decoder"
    m.residual = "reversible"
    m.attention_types = ("full",)
    m.cross_attention = "full"
    m.vocab_size = 32_768
    m.ff_activation = "relu"
    m.n_layers = m.n_encoder_layers = 6
    m.max_len = 256
    d.name = "translation"
    d.tfds_name = "wmt14_translate/de-en"
    d.source_lang, d.target_lang = "en", "de"
    d.seq_len = d.source_len = 256
    d.batch_tokens = 32_768
    t.label_smoothing = 0.1
    t.num_steps, t.log_every, t.eval_every, t.checkpoint_every = 100_000, 100, 1000, 1000
    o.name, o.b1, o.b2 = "adam", 0.9, 0.98
    o.schedule, o.warmup_steps = "rsqrt", 8000
    o.clip_norm = 0.0
    e.split = "validation"
    e.batch_size = 64
    e.num_batches = 10  # Token metrics during training (trax: eval_steps = 10).
    if variant == "base":
        m.d_model, m.d_ff, m.n_heads, m.d_head = 512, 2048, 8, 64
        m.dropout = 0.1
        o.learning_rate = 0.088 / 8000**0.5
    else:
        m.d_model, m.d_ff, m.n_heads, m.d_head = 1024, 4096, 16, 64
        m.dropout = 0.3
        o.learning_rate = 0.0625 / 8000**0.5
    return c
