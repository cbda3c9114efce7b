"""The default configuration and its validation.

Every config file in `configs/` starts from `default_config()` and changes fields, so each
experiment names the same fields and `validate` knows all of them. `validate` runs before any
work starts and turns a bad value into one clear error that names the field.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

ATTENTION_TYPES = ("full", "lsh", "local", "full_shared_qk")
SPLITS = ("train", "validation", "test")
OPTIMIZERS = ("adam", "adafactor")
SCHEDULES = ("rsqrt", "constant")
DATASETS = ("duplication", "enwik8", "text")
POSITIONAL = ("learned", "axial", "none")
DTYPES = ("float32", "bfloat16")


class ConfigError(ValueError):
    """A configuration field holds a value the project cannot run with."""


def default_config() -> ml_collections.ConfigDict:
    """All fields, with defaults for a small model on the duplication task."""
    c = ml_collections.ConfigDict()

    c.model = m = ml_collections.ConfigDict()
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
    m.n_hashes = 1  # LSH hash rounds in training.
    m.causal = True  # Decoder (language model) masking.
    m.reversible = False  # Reversible residual layers.
    m.ff_chunk_size = 0  # Feed-forward computed this many positions at a time; 0 = all.
    m.positional = "learned"  # Positional encoding: one of POSITIONAL.
    m.max_len = 2048  # Longest sequence the learned positional table covers.
    m.axial_shape = ()  # Axial positions: grid (a, b), a * b >= the longest sequence.
    m.axial_dims = ()  # Axial positions: widths (d1, d2), d1 + d2 = d_model.
    m.dropout = 0.0  # Dropout on residual branches.
    m.attention_dropout = 0.0  # Dropout on attention weights.
    m.dtype = "float32"  # Activation dtype: one of DTYPES (parameters stay float32).
    m.loss_chunk_size = 0  # Output logits and loss this many positions at a time; 0 = all.

    c.data = d = ml_collections.ConfigDict()
    # "enwik8": the TFDS builder (official zip, or data.path: the file or a prefix of it);
    # "text": any local byte file (data.path). Both split 90/5/5 in order; ids = byte + 2.
    d.name = "duplication"  # One of DATASETS.
    d.seq_len = 128  # Tokens per training sequence.
    d.word_len = 63  # Duplication task: |w|; sequences are 0 w 0 w (seq_len = 2 |w| + 2).
    d.path = ""  # Local file (raw or zip) for "enwik8" (optional) and "text" (required).
    d.tfds_dir = ""  # Where TFDS writes prepared data; "" = TFDS's default directory.

    c.train = t = ml_collections.ConfigDict()
    t.num_steps = 1000  # Total optimizer steps; a resumed run continues to this step.
    t.batch_size = 16  # Global batch size (sequences per step, over all devices).
    t.seed = 0  # Seed for parameters, data order, dropout and hashing.
    t.log_every = 50  # Steps between progress lines and metrics records.
    t.eval_every = 250  # Steps between evaluations (and at the end); 0 = only at the end.
    t.checkpoint_every = 250  # Steps between checkpoints (and at the end).
    t.keep_checkpoints = 3  # How many recent checkpoints to keep.

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
    return c


def load_config_file(path: str, variant: str | None = None) -> ml_collections.ConfigDict:
    """`get_config([variant])` of a config file, as `--config path[:variant]` loads it."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(f"reformer_configs_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if variant is None else module.get_config(variant)


def _keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, object]:
    out = {}
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if isinstance(v, ml_collections.ConfigDict):
            out.update(_keys(v, name + "."))
        else:
            out[name] = v
    return out


def _check(ok: bool, field: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"config.{field}: {message}")


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Raises ConfigError naming the first field that cannot work."""
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

    m, d, t, o, e = config.model, config.data, config.train, config.optimizer, config.eval
    for group, names in (
        (
            "model",
            (
                "vocab_size",
                "d_model",
                "d_ff",
                "n_heads",
                "d_head",
                "n_layers",
                "lsh_chunk_len",
                "local_chunk_len",
                "n_hashes",
                "max_len",
            ),
        ),
        ("data", ("seq_len",)),
        ("train", ("num_steps", "batch_size", "log_every", "checkpoint_every", "keep_checkpoints")),
        ("eval", ("num_batches", "batch_size")),
    ):
        for name in names:
            value = config[group][name]
            _check(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                f"{group}.{name}",
                f"must be a positive integer, got {value!r}",
            )
    for group, name in (
        ("model", "n_buckets"),
        ("model", "ff_chunk_size"),
        ("model", "loss_chunk_size"),
        ("train", "eval_every"),
        ("optimizer", "warmup_steps"),
        ("eval", "n_hashes"),
        ("eval", "stride"),
    ):
        value = config[group][name]
        _check(
            isinstance(value, int) and value >= 0,
            f"{group}.{name}",
            f"must be a non-negative integer, got {value!r}",
        )

    types = tuple(m.attention_types)
    _check(len(types) > 0, "model.attention_types", "must name at least one attention type")
    for a in types:
        _check(
            a in ATTENTION_TYPES, "model.attention_types", f"{a!r} is not one of {ATTENTION_TYPES}"
        )
    eval_types = tuple(e.attention_types)
    if eval_types:
        _check(
            len(eval_types) == len(types),
            "eval.attention_types",
            f"must have one entry per entry of model.attention_types {types}, got {eval_types}",
        )
        for a in eval_types:
            _check(
                a in ATTENTION_TYPES,
                "eval.attention_types",
                f"{a!r} is not one of {ATTENTION_TYPES}",
            )
    _check(e.split in SPLITS, "eval.split", f"must be one of {SPLITS}, got {e.split!r}")
    _check(
        m.positional in POSITIONAL,
        "model.positional",
        f"must be one of {POSITIONAL}, got {m.positional!r}",
    )
    _check(m.dtype in DTYPES, "model.dtype", f"must be one of {DTYPES}, got {m.dtype!r}")
    _check(m.n_buckets % 2 == 0, "model.n_buckets", f"must be even (or 0), got {m.n_buckets}")
    for name in ("dropout", "attention_dropout"):
        _check(0.0 <= m[name] < 1.0, f"model.{name}", f"must be in [0, 1), got {m[name]!r}")
    if m.positional == "axial":
        shape, dims = tuple(m.axial_shape), tuple(m.axial_dims)
        _check(
            len(shape) == 2 and all(isinstance(a, int) and a > 0 for a in shape),
            "model.axial_shape",
            f"must be two positive integers (a, b), got {shape}",
        )
        _check(
            len(dims) == 2 and all(isinstance(a, int) and a > 0 for a in dims),
            "model.axial_dims",
            f"must be two positive integers (d1, d2), got {dims}",
        )
        _check(
            dims[0] + dims[1] == m.d_model,
            "model.axial_dims",
            f"{dims} must add up to model.d_model={m.d_model}",
        )
        _check(
            shape[0] * shape[1] >= d.seq_len,
            "model.axial_shape",
            f"{shape} covers {shape[0] * shape[1]} positions, fewer than data.seq_len={d.seq_len}",
        )
    if m.positional == "learned":
        _check(
            d.seq_len <= m.max_len,
            "data.seq_len",
            f"{d.seq_len} exceeds model.max_len={m.max_len}, the learned positional table",
        )

    _check(d.name in DATASETS, "data.name", f"must be one of {DATASETS}, got {d.name!r}")
    if d.name == "duplication":
        _check(d.word_len >= 1, "data.word_len", f"must be >= 1, got {d.word_len}")
        _check(
            d.seq_len == 2 * d.word_len + 2,
            "data.seq_len",
            f"the duplication task 0 w 0 w needs seq_len = 2 * data.word_len + 2 = "
            f"{2 * d.word_len + 2}, got {d.seq_len}",
        )
        _check(
            m.vocab_size >= 3,
            "model.vocab_size",
            f"the duplication task needs symbols 1..vocab_size-1 plus the separator 0, "
            f"so vocab_size >= 3; got {m.vocab_size}",
        )
    else:
        _check(
            m.vocab_size >= 258,
            "model.vocab_size",
            f"byte-level data uses ids 0..257 (byte + 2), so vocab_size >= 258; got {m.vocab_size}",
        )
        if d.name == "text":
            _check(bool(d.path), "data.path", 'data.name="text" reads a local file; give its path')
        if d.path:
            _check(os.path.isfile(d.path), "data.path", f"no such file: {d.path}")
        _check(
            e.stride <= d.seq_len,
            "eval.stride",
            f"must be at most data.seq_len={d.seq_len} (0 = seq_len), got {e.stride}",
        )

    for group, bs in (("train", t.batch_size), ("eval", e.batch_size)):
        _check(
            bs % num_devices == 0,
            f"{group}.batch_size",
            f"{bs} is not divisible by the number of devices ({num_devices})",
        )

    _check(o.name in OPTIMIZERS, "optimizer.name", f"must be one of {OPTIMIZERS}, got {o.name!r}")
    _check(
        o.schedule in SCHEDULES,
        "optimizer.schedule",
        f"must be one of {SCHEDULES}, got {o.schedule!r}",
    )
    _check(
        o.learning_rate > 0, "optimizer.learning_rate", f"must be positive, got {o.learning_rate!r}"
    )
    _check(o.clip_norm >= 0, "optimizer.clip_norm", f"must be >= 0, got {o.clip_norm!r}")
    _check(o.weight_decay >= 0, "optimizer.weight_decay", f"must be >= 0, got {o.weight_decay!r}")
