"""The default configuration and its validation.

Every config file in `configs/` starts from `default_config()` and changes fields, so each
experiment names the same fields and `validate` knows all of them. `validate` runs before any
work starts and turns a bad value into one clear error that names the field.
"""

from __future__ import annotations

import math
import os
import types

import ml_collections
from absl import logging

from reformer import storage
from reformer.errors import ConfigError  # noqa: F401  (re-exported)
from reformer.legacy import LEGACY_FIELDS, migrate  # noqa: F401  (re-exported)

ATTENTION_TYPES = ("full", "lsh", "local", "full_shared_qk")
# "lm": causal language model; "masked_lm": bidirectional encoder predicting masked tokens;
# "classifier": bidirectional encoder, one label per sequence from its pooled output.
# "encoder_decoder": such an encoder over a source and a causal decoder over the target.
MODEL_KINDS = ("lm", "masked_lm", "classifier", "encoder_decoder")
CROSS_ATTENTION = ("full", "lsh")
# How the blocks join: "reversible" (two streams, recomputed backward pass), "two_stream" (the
# same function, activations stored), "standard" (one stream, pre-LayerNorm: the Transformer).
RESIDUALS = ("reversible", "two_stream", "standard")
SPLITS = ("train", "validation", "test")
OPTIMIZERS = ("adam", "adafactor")
SCHEDULES = ("rsqrt", "constant")
DATASETS = (
    "duplication",
    "enwik8",
    "text",
    "masked_duplication",
    "match",
    "reverse",
    "translation",
)
POSITIONAL = ("learned", "axial", "none")
DTYPES = ("float32", "bfloat16")
# The data each model kind trains on.
KIND_DATASETS = {
    "lm": ("duplication", "enwik8", "text"),
    "masked_lm": ("masked_duplication",),
    "classifier": ("match",),
    "encoder_decoder": ("reverse", "translation"),
}
# Synthetic tasks (reformer/data/duplication.py): the least vocab_size, and why.
SYNTHETIC_VOCAB = {
    "duplication": (3, "symbols 1..vocab_size-1 plus the separator 0"),
    "masked_duplication": (5, "padding 0, separator 1, the mask id vocab_size-1, 2 symbols"),
    "match": (4, "padding 0, separator 1 and 2 symbols"),
    "reverse": (4, "padding 0, the end id 1 and 2 symbols"),
}
# "gelu": the tanh approximation (flax's default, HF "gelu_new"); "gelu_exact": the erf form.
FF_ACTIVATIONS = ("gelu", "gelu_exact", "relu")


def default_config() -> ml_collections.ConfigDict:
    """All fields, with defaults for a small model on the duplication task."""
    c = ml_collections.ConfigDict()

    c.model = m = ml_collections.ConfigDict()
    m.kind = "lm"  # What the model is and predicts: one of MODEL_KINDS.
    m.n_classes = 2  # Labels of model.kind = "classifier".
    # Encoder-decoder: the decoder has attention_types and n_layers; the encoder these
    # (() and 0: the decoder's). Its layers attend to the encoder output with this kind.
    m.cross_attention = "full"  # Decoder-to-encoder attention: one of CROSS_ATTENTION.
    m.encoder_attention_types = ()  # Encoder's pattern, each of ATTENTION_TYPES; () = same.
    m.n_encoder_layers = 0  # Encoder's depth; 0 = n_layers.
    m.share_embeddings = True  # Source and target share the token table (one vocabulary).
    m.vocab_size = 128  # Token ids are 0..vocab_size-1 (bytes: 258 = 256 bytes + pad + end).
    m.d_model = 128  # Width of the residual stream.
    m.d_ff = 512  # Hidden width of the feed-forward block.
    m.n_heads = 4  # Attention heads per layer.
    m.d_head = 32  # Width of one head's queries, keys and values.
    m.n_layers = 2  # Number of blocks (attention + feed-forward).
    # "full_shared_qk" is full attention with the LSH layer's shared query-key projection.
    m.attention_types = ("full",)  # Cycled over the layers; each of ATTENTION_TYPES.
    m.lsh_chunk_len = 64  # Chunk length of LSH attention.
    m.local_chunk_len = 64  # Chunk length of local attention.
    m.n_buckets = 0  # LSH buckets per round; 0 = automatic (about 2 L / lsh_chunk_len).
    # Factorized LSH buckets (trax, HF): n_buckets is the product of these even counts, hashed
    # with sum / 2 rotations per round instead of n_buckets / 2.
    m.bucket_factors = ()  # LSH bucket count as a product, e.g. (32, 64); () = not factorized.
    # LSH attention layers run whole (projections to output) for this many heads at a
    # time, recomputed in the backward pass: less memory, one more forward pass.
    m.lsh_heads_per_step = 0  # Heads per step of an LSH layer; 0 = all at once.
    m.n_hashes = 1  # LSH hash rounds in training.
    m.causal = True  # Causal masking of model.kind = "lm" (encoders are bidirectional).
    m.residual = "two_stream"  # How the blocks join: one of RESIDUALS.
    # Feed-forward, LayerNorms, projections, dropout (and causal local attention whole)
    # run this many positions at a time, rematerialized in the backward pass.
    m.position_chunk_size = 0  # Positions per chunk of position-wise work; 0 = all at once.
    m.ff_activation = "gelu"  # Feed-forward nonlinearity: one of FF_ACTIVATIONS.
    m.layer_norm_eps = 1e-6  # Epsilon of every LayerNorm (HF Reformer checkpoints: 1e-12).
    m.positional = "learned"  # Positional encoding: one of POSITIONAL.
    m.max_len = 2048  # Longest sequence the learned positional table covers.
    m.axial_shape = ()  # Axial positions: grid (a, b), a * b >= the longest sequence.
    m.axial_dims = ()  # Axial positions: widths (d1, d2), d1 + d2 = d_model.
    m.dropout = 0.0  # Dropout on residual branches.
    m.attention_dropout = 0.0  # Dropout on attention weights.
    m.dtype = "float32"  # Activation dtype: one of DTYPES (parameters stay float32).
    m.loss_chunk_size = 0  # Final LayerNorm, logits and loss this many positions at a time.

    c.data = d = ml_collections.ConfigDict()
    # "enwik8": the TFDS builder (official zip, or data.path: the file or a prefix of it);
    # "text": any local byte file (data.path). Both split 90/5/5 in order; ids = byte + 2.
    # "masked_duplication" (masked_lm) and "match" (classifier): synthetic encoder tasks of
    # reformer/data/duplication.py whose answers need a token far away; "reverse"
    # (encoder_decoder): the source's symbols reversed and shifted.
    d.name = "duplication"  # One of DATASETS.
    d.seq_len = 128  # Tokens per training sequence (encoder_decoder: per target).
    d.source_len = 0  # encoder_decoder: tokens per source sequence.
    d.word_len = 63  # Duplication task: |w|; sequences are 0 w 0 w (seq_len = 2 |w| + 2).
    d.path = ""  # File (raw or zip; local or gs://) for "enwik8" (optional) and "text" (required).
    d.tfds_dir = ""  # Where TFDS writes prepared data (local); "" = TFDS's default directory.
    # "translation" (encoder_decoder): aligned text files, one sentence a line, in a shared
    # SentencePiece vocabulary of model.vocab_size pieces (reformer/data/translation.py).
    d.train_files = ""  # translation: the training pair, "{lang}" = data.source_lang / target_lang
    d.validation_files = ""  # translation: the validation pair, the same way (e.g. DIR/val.{lang})
    d.test_files = ""  # translation: the test pair, the same way
    d.source_lang = "en"  # translation: the source language ("{lang}" in its file names)
    d.target_lang = "de"  # translation: the target language
    d.vocab_path = ""  # translation: SentencePiece model ("" = WORKDIR/vocab.model, made)
    d.batch_tokens = 4096  # translation: padded positions per training batch (sets pairs per batch)
    # translation: a TFDS dataset in place of the files (e.g. "wmt14_translate/de-en"; its
    # splits train / validation / test), prepared into data.tfds_dir on first use.
    d.tfds_name = ""

    c.train = t = ml_collections.ConfigDict()
    t.num_steps = 1000  # Total optimizer steps; a resumed run continues to this step.
    t.batch_size = 16  # Global batch size (sequences per step, over all devices).
    t.seed = 0  # Seed for parameters, data order, dropout and hashing.
    t.log_every = 50  # Steps between progress lines and metrics records.
    t.eval_every = 250  # Steps between evaluations (and at the end); 0 = only at the end.
    t.checkpoint_every = 250  # Steps between checkpoints (and at the end).
    t.keep_checkpoints = 3  # How many recent checkpoints to keep.
    # The global batch is split into this many micro-batches whose gradients are summed
    # inside the step (same result as the whole batch, less activation memory).
    t.grad_accum_steps = 1  # Micro-batches per optimizer step.
    t.label_smoothing = 0.0  # Targets mixed with this much of a uniform distribution (0..1).
    # Fine-tuning: a workdir (e.g. one written by scripts/convert_hf_checkpoint.py) whose
    # latest checkpoint's parameters start this run, with fresh optimizer state at step 0.
    # Used only when --workdir has no checkpoint yet (resuming comes first).
    t.init_from = ""  # Workdir to take initial parameters from; "" = random initialization.

    # Device mesh ("data", "fsdp"): the batch is split over both axes; with fsdp > 1 the
    # parameters and optimizer state are sharded over "fsdp". data * fsdp = all devices.
    c.mesh = s = ml_collections.ConfigDict()
    s.data = -1  # Devices on the data axis; -1 = all devices not on fsdp.
    s.fsdp = 1  # Devices sharing the parameters (FSDP); -1 = all devices not on data.

    c.optimizer = o = ml_collections.ConfigDict()
    o.name = "adam"  # One of OPTIMIZERS.
    o.learning_rate = 1e-3  # Peak learning rate, reached at the end of warmup.
    o.warmup_steps = 100  # Linear warmup from 0.
    o.schedule = "rsqrt"  # After warmup: "rsqrt" (lr * sqrt(warmup / step)) or "constant".
    o.clip_norm = 1.0  # Global gradient-norm clipping; 0 = off.
    o.weight_decay = 0.0  # Decoupled weight decay (AdamW); 0 = plain Adam.
    o.b1 = 0.9  # Adam beta1.
    o.b2 = 0.98  # Adam beta2.

    c.eval = e = ml_collections.ConfigDict()
    e.num_batches = 4  # Batches per evaluation.
    e.batch_size = 16  # Sequences per evaluation batch (global).
    e.n_hashes = 0  # LSH hash rounds at evaluation; 0 = same as model.n_hashes.
    e.seed = 12345  # Seed of the evaluation data (kept apart from training data).
    # E.g. ("full_shared_qk",) scores an "lsh" model with full attention (paper, Table 2).
    e.attention_types = ()  # Attention types at evaluation, same weights; () = as trained.
    e.split = "validation"  # Split evaluated on byte data: one of SPLITS.
    e.stride = 0  # Byte data: sliding windows advancing this many bytes; 0 = seq_len.
    e.cached = False  # Score through the decoding caches (reformer/decode.py) as sampling runs.
    # Encoder-decoders (reformer.evaluate): also decode every source greedily through the
    # caches, free-running, and report the share of targets reproduced exactly.
    e.free_running = False  # Report exact_match of greedy decoding (model.kind encoder_decoder).
    # Translation (reformer.evaluate): the split decoded with beam search and scored with
    # sacreBLEU, cased and uncased; the translations are written beside the JSON.
    e.beam_size = 4  # Beams when decoding a translation split; 0 = token metrics only.
    e.alpha = 0.6  # Beam search's length penalty (the authors' value).
    return c


def load_config_file(path: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """`get_config([variant])` of a config file, as `--config path[:variant]` loads it, with
    legacy fields migrated (`migrate`)."""
    name = os.path.splitext(os.path.basename(str(path)))[0]
    module = types.ModuleType(f"reformer_configs_{name}")
    module.__file__ = str(path)
    exec(compile(storage.read_text(path), str(path), "exec"), module.__dict__)  # Local or gs://.
    config = module.get_config() if variant is None else module.get_config(variant)
    migrate(config)
    return config


def _keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_keys(v, name + "."))
        else:
            out[name] = v
    return out


class Report:
    """Problems found in a config: each names its field. Checks add to it; fields already
    reported are not used by later cross-field checks (so one bad value gives one line)."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.problems: list[tuple[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.problems.append((field, message))

    def check(self, ok: bool, field: str, message: str) -> bool:
        if not ok:
            self.add(field, message)
        return ok

    def fine(self, *fields: str) -> bool:
        """True when none of `fields` has been reported."""
        bad = {f for f, _ in self.problems}
        return not bad.intersection(fields)

    def value(self, field: str):
        group, name = field.split(".")
        return self.config[group][name]

    def raise_if_any(self) -> None:
        if not self.problems:
            return
        lines = [f"config.{field}: {message}" for field, message in self.problems]
        if len(lines) == 1:
            raise ConfigError(lines[0])
        raise ConfigError(f"{len(lines)} problems in the config:\n  " + "\n  ".join(lines))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


POSITIVE_INTS = (
    "model.vocab_size",
    "model.d_model",
    "model.d_ff",
    "model.n_heads",
    "model.d_head",
    "model.n_layers",
    "model.n_classes",
    "model.lsh_chunk_len",
    "model.local_chunk_len",
    "model.n_hashes",
    "model.max_len",
    "data.seq_len",
    "train.num_steps",
    "train.batch_size",
    "train.log_every",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.grad_accum_steps",
    "eval.num_batches",
    "eval.batch_size",
)
NON_NEGATIVE_INTS = (
    "model.n_buckets",
    "model.position_chunk_size",
    "model.loss_chunk_size",
    "model.lsh_heads_per_step",
    "train.eval_every",
    "optimizer.warmup_steps",
    "eval.n_hashes",
    "eval.stride",
    "model.n_encoder_layers",
    "data.source_len",
)


def _check_numbers(r: Report) -> None:
    for field in POSITIVE_INTS:
        v = r.value(field)
        r.check(_is_int(v) and v > 0, field, f"must be a positive integer, got {v!r}")
    for field in NON_NEGATIVE_INTS:
        v = r.value(field)
        r.check(_is_int(v) and v >= 0, field, f"must be a non-negative integer, got {v!r}")
    eps = r.config.model.layer_norm_eps
    r.check(
        isinstance(eps, int | float) and not isinstance(eps, bool) and 0 < eps < 1,
        "model.layer_norm_eps",
        f"must be a number in (0, 1), got {eps!r}",
    )
    o = r.config.optimizer
    for field in (
        "model.dropout",
        "model.attention_dropout",
        "optimizer.b1",
        "optimizer.b2",
        "train.label_smoothing",
    ):
        v = r.value(field)
        r.check(isinstance(v, int | float) and 0 <= v < 1, field, f"must be in [0, 1), got {v!r}")
    r.check(
        isinstance(o.learning_rate, int | float) and 0 < o.learning_rate < float("inf"),
        "optimizer.learning_rate",
        f"must be positive and finite, got {o.learning_rate!r}",
    )
    for name in ("clip_norm", "weight_decay"):
        v = o[name]
        r.check(
            isinstance(v, int | float) and v >= 0, f"optimizer.{name}", f"must be >= 0, got {v!r}"
        )


def _check_choices(r: Report) -> None:
    for field, allowed in (
        ("model.kind", MODEL_KINDS),
        ("model.cross_attention", CROSS_ATTENTION),
        ("model.residual", RESIDUALS),
        ("model.positional", POSITIONAL),
        ("model.dtype", DTYPES),
        ("model.ff_activation", FF_ACTIVATIONS),
        ("data.name", DATASETS),
        ("optimizer.name", OPTIMIZERS),
        ("optimizer.schedule", SCHEDULES),
        ("eval.split", SPLITS),
    ):
        v = r.value(field)
        r.check(v in allowed, field, f"must be one of {allowed}, got {v!r}")
    if r.config.eval.free_running and r.fine("model.kind"):
        r.check(
            r.config.model.kind == "encoder_decoder",
            "eval.free_running",
            f"decodes sources: needs model.kind = 'encoder_decoder', got {r.config.model.kind!r}",
        )
    if r.config.eval.cached and r.fine("model.causal", "model.kind"):
        r.check(
            r.config.model.kind in ("lm", "encoder_decoder") and r.config.model.causal,
            "eval.cached",
            "decoding needs a causal decoder (model.kind 'lm' or 'encoder_decoder', "
            "model.causal = True)",
        )


def _check_layers(r: Report) -> None:
    m = r.config.model
    types = tuple(m.attention_types)
    if not r.check(
        len(types) > 0, "model.attention_types", "must name at least one attention type"
    ):
        return
    unknown = [a for a in types if a not in ATTENTION_TYPES]
    if not r.check(
        not unknown,
        "model.attention_types",
        f"{unknown[0]!r} is not one of {ATTENTION_TYPES}" if unknown else "",
    ):
        return
    if r.fine("model.n_layers"):
        r.check(
            m.n_layers % len(types) == 0,
            "model.n_layers",
            f"must be a multiple of len(model.attention_types)={len(types)} (the pattern "
            f"{types} repeats over the layers), got {m.n_layers}",
        )
    eval_types = tuple(r.config.eval.attention_types)
    if eval_types and m.kind == "encoder_decoder":
        r.add(
            "eval.attention_types",
            "retyping layers at evaluation is for one stack of layers (model.kind 'lm', "
            "'masked_lm', 'classifier'); leave it () for an encoder-decoder",
        )
    elif eval_types:
        bad = [a for a in eval_types if a not in ATTENTION_TYPES]
        r.check(
            len(eval_types) == len(types) and not bad,
            "eval.attention_types",
            f"{bad[0]!r} is not one of {ATTENTION_TYPES}"
            if bad
            else f"must have one entry per entry of model.attention_types {types}, "
            f"got {eval_types}",
        )
    if r.fine("model.n_buckets") and m.n_buckets % 2:
        r.add("model.n_buckets", f"must be even (or 0), got {m.n_buckets}")
    factors = tuple(m.bucket_factors)
    if factors:
        if not all(_is_int(f) and f >= 2 and f % 2 == 0 for f in factors):
            r.add("model.bucket_factors", f"must be even counts >= 2, got {factors}")
        elif r.fine("model.n_buckets") and m.n_buckets not in (0, math.prod(factors)):
            r.add(
                "model.bucket_factors",
                f"their product {math.prod(factors)} must equal model.n_buckets={m.n_buckets} "
                "(or set n_buckets to 0)",
            )
    if r.fine("model.lsh_heads_per_step", "model.n_heads"):
        per_step, n_heads = m.lsh_heads_per_step, m.n_heads
        r.check(
            per_step == 0 or n_heads % per_step == 0,
            "model.lsh_heads_per_step",
            f"must divide model.n_heads={n_heads} (or be 0), got {per_step}",
        )
    seq = r.config.data.seq_len
    if not r.fine("data.seq_len"):
        return
    for kind, field in (("lsh", "model.lsh_chunk_len"), ("local", "model.local_chunk_len")):
        if kind in types and r.fine(field):
            v = r.value(field)
            r.check(
                v <= seq,
                field,
                f"{v} is longer than data.seq_len={seq}; use at most the sequence length",
            )


def _check_encoder_decoder(r: Report) -> None:
    m, d = r.config.model, r.config.data
    if m.kind != "encoder_decoder" or not r.fine("model.kind"):
        return
    types = tuple(m.encoder_attention_types) or tuple(m.attention_types)
    bad = [a for a in types if a not in ATTENTION_TYPES]
    if r.check(
        not bad,
        "model.encoder_attention_types",
        f"{bad[0]!r} is not one of {ATTENTION_TYPES}" if bad else "",
    ) and r.fine("model.n_encoder_layers", "model.n_layers"):
        depth = m.n_encoder_layers or m.n_layers
        r.check(
            depth % len(types) == 0,
            "model.n_encoder_layers",
            f"the encoder's depth {depth} must be a multiple of its pattern's length "
            f"{len(types)} ({types})",
        )
    if not r.check(
        _is_int(d.source_len) and d.source_len > 0,
        "data.source_len",
        f"model.kind='encoder_decoder' needs the source length, a positive integer; "
        f"got {d.source_len!r}",
    ):
        return
    if m.positional == "learned" and r.fine("model.max_len", "model.positional"):
        r.check(
            d.source_len <= m.max_len,
            "data.source_len",
            f"{d.source_len} exceeds model.max_len={m.max_len}, the learned positional table",
        )
    for kind, field in (("lsh", "model.lsh_chunk_len"), ("local", "model.local_chunk_len")):
        if kind in types and r.fine(field):
            r.check(
                r.value(field) <= d.source_len,
                field,
                f"{r.value(field)} is longer than data.source_len={d.source_len}",
            )


def _check_positions(r: Report) -> None:
    m, seq = r.config.model, r.config.data.seq_len
    if not r.fine("model.positional", "data.seq_len"):
        return
    if m.positional == "axial":
        shape, dims = tuple(m.axial_shape), tuple(m.axial_dims)
        shape_ok = r.check(
            len(shape) == 2 and all(_is_int(a) and a > 0 for a in shape),
            "model.axial_shape",
            f"must be two positive integers (a, b), got {shape}",
        )
        dims_ok = r.check(
            len(dims) == 2 and all(_is_int(a) and a > 0 for a in dims),
            "model.axial_dims",
            f"must be two positive integers (d1, d2), got {dims}",
        )
        if dims_ok and r.fine("model.d_model"):
            r.check(
                dims[0] + dims[1] == m.d_model,
                "model.axial_dims",
                f"{dims} must add up to model.d_model={m.d_model}",
            )
        if shape_ok:
            r.check(
                shape[0] * shape[1] >= seq,
                "model.axial_shape",
                f"{shape} covers {shape[0] * shape[1]} positions, fewer than data.seq_len={seq}",
            )
    elif m.positional == "learned" and r.fine("model.max_len"):
        r.check(
            seq <= m.max_len,
            "data.seq_len",
            f"{seq} exceeds model.max_len={m.max_len}, the learned positional table",
        )


def _check_data(r: Report) -> None:
    m, d, e = r.config.model, r.config.data, r.config.eval
    if not r.fine("data.name"):
        return
    if r.fine("model.kind"):
        r.check(
            d.name in KIND_DATASETS[m.kind],
            "data.name",
            f"model.kind={m.kind!r} trains on one of {KIND_DATASETS[m.kind]}, got {d.name!r}",
        )
    if d.name == "reverse" and r.fine("data.source_len", "data.seq_len"):
        r.check(
            d.source_len >= 2 and d.seq_len >= d.source_len,
            "data.seq_len",
            f"the reverse task's target is up to data.source_len - 1 symbols and the end id, "
            f"so data.source_len >= 2 and data.seq_len >= data.source_len = {d.source_len}; "
            f"got {d.seq_len}",
        )
    elif d.name in SYNTHETIC_VOCAB:
        if r.check(
            _is_int(d.word_len) and d.word_len >= 1,
            "data.word_len",
            f"must be >= 1, got {d.word_len!r}",
        ) and r.fine("data.seq_len"):
            r.check(
                d.seq_len == 2 * d.word_len + 2,
                "data.seq_len",
                f"the {d.name} task (two copies of a word, each after a separator) needs "
                f"seq_len = 2 * data.word_len + 2 = {2 * d.word_len + 2}, got {d.seq_len}",
            )
    if d.name == "translation":
        _check_translation(r)
        return
    if d.name in SYNTHETIC_VOCAB:
        least, why = SYNTHETIC_VOCAB[d.name]
        if r.fine("model.vocab_size"):
            r.check(
                m.vocab_size >= least,
                "model.vocab_size",
                f"the {d.name} task needs {why}, so vocab_size >= {least}; got {m.vocab_size}",
            )
        if d.name == "match" and r.fine("model.n_classes"):
            r.check(m.n_classes == 2, "model.n_classes", f"match has 2 labels, got {m.n_classes}")
        return
    if r.fine("model.vocab_size"):
        r.check(
            m.vocab_size >= 258,
            "model.vocab_size",
            f"byte-level data uses ids 0..257 (byte + 2), so vocab_size >= 258; got {m.vocab_size}",
        )
    if d.name == "text":
        r.check(bool(d.path), "data.path", 'data.name="text" reads a file; give its path')
    if d.path and _check_path(r, "data.path"):
        r.check(storage.isfile(d.path), "data.path", f"no such file: {d.path}")
    _check_tfds_dir(r)
    if r.fine("eval.stride", "data.seq_len"):
        r.check(
            e.stride <= d.seq_len,
            "eval.stride",
            f"must be at most data.seq_len={d.seq_len} (0 = seq_len), got {e.stride}",
        )


def _check_tfds_dir(r: Report) -> None:
    d = r.config.data
    if d.tfds_dir and _check_path(r, "data.tfds_dir"):
        r.check(
            not storage.is_remote(d.tfds_dir),
            "data.tfds_dir",
            f"{d.tfds_dir}: prepared TFDS records are read through local files (array_record), "
            "so this must be a local directory; every host prepares its own copy (data.path "
            "may be on gs://)",
        )


def _check_translation(r: Report) -> None:
    m, d = r.config.model, r.config.data
    files = [f for f in ("train", "validation", "test") if d[f"{f}_files"]]
    if d.tfds_name:
        r.check(
            isinstance(d.tfds_name, str) and not files,
            "data.tfds_name",
            f"{d.tfds_name!r} and data.{files[0] if files else 'train'}_files both name the "
            "pairs; give one of them",
        )
        _check_tfds_dir(r)
    elif r.check(
        bool(d.train_files),
        "data.train_files",
        "translation needs its training files (or a TFDS dataset in data.tfds_name)",
    ):
        for field in ("data.train_files", "data.validation_files", "data.test_files"):
            pattern = r.value(field)
            if pattern and r.check(
                "{lang}" in pattern,
                field,
                f'{pattern!r} must hold "{{lang}}" (data.source_lang / data.target_lang)',
            ):
                for lang in (d.source_lang, d.target_lang):
                    path = pattern.replace("{lang}", lang)
                    message = storage.problem(path) or f"no such file: {path}"
                    r.check(not storage.problem(path) and storage.isfile(path), field, message)
    split = r.config.eval.split
    r.check(
        split == "train" or bool(d.tfds_name) or bool(r.value(f"data.{split}_files")),
        "eval.split",
        f"{split!r} has no files (data.{split}_files is empty)",
    )
    if d.vocab_path:
        _check_path(r, "data.vocab_path")
    r.check(
        _is_int(d.batch_tokens) and d.batch_tokens >= max(d.seq_len, d.source_len),
        "data.batch_tokens",
        f"must hold at least one pair of the longest length {max(d.seq_len, d.source_len)} "
        f"(data.seq_len, data.source_len); got {d.batch_tokens!r}",
    )
    bad = [a for a in (*m.attention_types, *m.encoder_attention_types) if a in ("lsh", "local")]
    r.check(
        not bad,
        "model.attention_types",
        f"translation batches sentences of several lengths, which {bad[0] if bad else ''} "
        "attention's chunks do not divide; use full or full_shared_qk (sentences are shorter "
        "than a chunk, as in the paper's WMT runs)",
    )


def _check_init_from(r: Report) -> None:
    path = r.config.train.init_from
    if not path:
        return
    if r.check(isinstance(path, str), "train.init_from", f"must be a path, got {path!r}"):
        if _check_path(r, "train.init_from"):
            checkpoints = storage.join(path, "checkpoints")
            r.check(
                storage.isdir(checkpoints),
                "train.init_from",
                f"{path} is not a workdir with checkpoints (no {checkpoints})",
            )


def _check_path(r: Report, field: str) -> bool:
    """A local or gs:// path (`storage.problem`); False after reporting one that is not."""
    message = storage.problem(r.value(field))
    return r.check(message is None, field, message or "")


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
    """`(data, fsdp)` with a -1 resolved to the remaining devices; ConfigError if the sizes
    do not fit `num_devices`."""
    r = Report(ml_collections.ConfigDict({"mesh": {"data": data, "fsdp": fsdp}}))
    shape = _resolve_mesh(r, num_devices)
    r.raise_if_any()
    return shape


def _resolve_mesh(r: Report, num_devices: int) -> tuple[int, int] | None:
    sizes = {}
    for name in ("data", "fsdp"):
        v = r.config.mesh[name]
        if r.check(
            _is_int(v) and (v > 0 or v == -1),
            f"mesh.{name}",
            f"must be a positive integer or -1 (all remaining devices), got {v!r}",
        ):
            sizes[name] = v
    if len(sizes) < 2:
        return None
    data, fsdp = sizes["data"], sizes["fsdp"]
    if data == -1 and fsdp == -1:
        r.add("mesh.data", "mesh.data and mesh.fsdp cannot both be -1")
        return None
    if -1 in (data, fsdp):  # The other axis takes the remaining devices.
        fixed, field = (fsdp, "mesh.fsdp") if data == -1 else (data, "mesh.data")
        if not r.check(
            num_devices % fixed == 0,
            field,
            f"{fixed} does not divide the number of devices ({num_devices})",
        ):
            return None
        rest = num_devices // fixed
        return (rest, fsdp) if data == -1 else (data, rest)
    if not r.check(
        data * fsdp == num_devices,
        "mesh.data",
        f"mesh.data * mesh.fsdp = {data} * {fsdp} = {data * fsdp} must equal the number of devices "
        f"({num_devices}); set one of them to -1 to use all remaining devices",
    ):
        return None
    return data, fsdp


def _check_parallelism(r: Report, num_devices: int) -> None:
    shape = _resolve_mesh(r, num_devices)
    if shape is None:
        return
    shards = shape[0] * shape[1]
    t, e = r.config.train, r.config.eval
    if r.fine("train.batch_size", "train.grad_accum_steps"):
        need = shards * t.grad_accum_steps
        r.check(
            t.batch_size % need == 0,
            "train.batch_size",
            f"{t.batch_size} is not divisible by the number of devices ({num_devices})"
            if t.grad_accum_steps == 1
            else f"{t.batch_size} is not divisible by mesh.data * mesh.fsdp * "
            f"train.grad_accum_steps = {shape[0]} * {shape[1]} * {t.grad_accum_steps} = {need}",
        )
    if r.fine("eval.batch_size"):
        r.check(
            e.batch_size % shards == 0,
            "eval.batch_size",
            f"{e.batch_size} is not divisible by the number of devices ({num_devices})",
        )


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Checks every field and cross-field constraint before anything compiles.

    Raises one ConfigError listing every problem, each with its field and the allowed
    values. `num_devices` is the number of devices of the whole run (all processes).
    """
    for note in migrate(config):
        logging.warning("config: %s (the old name still loads; use the new one)", note)
    known, given = _keys(default_config()), _keys(config)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown config field(s): {', '.join('config.' + u for u in unknown)}. "
            "Known fields are listed in reformer/config.py:default_config()."
        )
    missing = sorted(set(known) - set(given))
    if missing:
        raise ConfigError(f"missing config field(s): {', '.join('config.' + u for u in missing)}")
    report = Report(config)
    for check in (
        _check_numbers,
        _check_choices,
        _check_layers,
        _check_positions,
        _check_data,
        _check_encoder_decoder,
        _check_init_from,
    ):
        check(report)
    _check_parallelism(report, num_devices)
    report.raise_if_any()
