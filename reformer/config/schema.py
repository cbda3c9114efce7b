"""The config schema: every field of every group declared once, with its default, allowed
values, one-line doc and what a resumed run must keep of it.

Everything else is derived from `GROUPS`: `default_config()`, the per-field checks of
`validation.py`, the checkpoint compatibility check (`Field.resume`), legacy field names
(`Field.legacy`), `ModelConfig` (the model's frozen fields) and the field table of
`python -m reformer.config` (docs/config.md). Adding a field is one `Field` line in its
group plus its use.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import ml_collections

# ---------------------------------------------------------------------------------------
# Allowed values that other code names.

# "full_shared_qk" is full attention with the LSH layer's shared query-key projection. More
# types are added by `reformer.model.attention_types.register`.
ATTENTION_TYPES = ["full", "lsh", "local", "full_shared_qk"]
# "lm": causal language model; "masked_lm": bidirectional encoder predicting masked tokens;
# "classifier": bidirectional encoder, one label per sequence from its pooled output;
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
    "images",
)
POSITIONAL = ("learned", "axial", "none")
DTYPES = ("float32", "bfloat16")
# "gelu": the tanh approximation (flax's default, HF "gelu_new"); "gelu_exact": the erf form.
FF_ACTIVATIONS = ("gelu", "gelu_exact", "relu")
# The data each model kind trains on.
KIND_DATASETS = {
    "lm": ("duplication", "enwik8", "text", "images"),
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


# ---------------------------------------------------------------------------------------
# Rules: what a field's value must be, as a test and the words of the error.


@dataclasses.dataclass(frozen=True)
class Rule:
    """A value's requirement: `test(value)`, and `text` for "must be <text>, got <value>"."""

    text: str
    test: Callable[[Any], bool]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def one_of(choices) -> Rule:
    """One of `choices` (a tuple, or a list that registrations may extend)."""
    return Rule(f"one of {tuple(choices)}", lambda v: v in choices)


POSITIVE_INT = Rule("a positive integer", lambda v: _is_int(v) and v > 0)
NON_NEGATIVE_INT = Rule("a non-negative integer", lambda v: _is_int(v) and v >= 0)
FRACTION = Rule("in [0, 1)", lambda v: _is_number(v) and 0 <= v < 1)
OPEN_FRACTION = Rule("a number in (0, 1)", lambda v: _is_number(v) and 0 < v < 1)
POSITIVE_FINITE = Rule("positive and finite", lambda v: _is_number(v) and 0 < v < math.inf)
NON_NEGATIVE = Rule(">= 0", lambda v: _is_number(v) and v >= 0)

# What a resumed run must keep of a field (`checkpoints.check_config_matches`):
SAME = "same"  # its value: it shapes the parameters or optimizer state, or defines the model
ON_OFF = "on_off"  # whether it is above 0: that adds or removes optimizer state
FREE = "free"  # nothing: it changes how the run goes, not what a checkpoint holds


@dataclasses.dataclass(frozen=True)
class Field:
    """One config field: `default` (its type is the default's), `doc`, `rule` (checked by
    `validate`; None: only cross-field checks), `resume` (SAME, ON_OFF or FREE; None takes
    the group's default), and
    `legacy`: an older field that `migrate` rewrites into this one, as `(old name,
    convert)` with `convert(old value, this field's value) -> new value`, raising
    ValueError when the two contradict."""

    default: Any
    doc: str
    rule: Rule | None = None
    resume: str | None = None  # None: the group's default (`_group`)
    legacy: tuple[str, Callable[[Any, Any], Any]] | None = None

    @property
    def is_tuple(self) -> bool:
        return isinstance(self.default, tuple)


def _from_reversible(old, residual):
    if old and residual not in ("two_stream", "reversible"):
        raise ValueError(residual)
    return "reversible" if old else residual


def _from_ff_chunk_size(old, new):
    if new and old and new != old:
        raise ValueError(new)
    return new or old


def _group(resume: str, **fields: Field) -> dict[str, Field]:
    """A group's fields, those that do not say what a resumed run keeps taking `resume`
    (SAME for the model's fields, FREE for the others)."""
    return {
        name: f if f.resume is not None else dataclasses.replace(f, resume=resume)
        for name, f in fields.items()
    }


MODEL = _group(
    SAME,
    kind=Field("lm", "What the model is and predicts.", one_of(MODEL_KINDS)),
    n_classes=Field(2, "Labels of model.kind = 'classifier'.", POSITIVE_INT),
    cross_attention=Field(
        "full", "encoder_decoder: decoder-to-encoder attention.", one_of(CROSS_ATTENTION)
    ),
    encoder_attention_types=Field(
        (), "encoder_decoder: the encoder's pattern of attention types; () = the decoder's."
    ),
    n_encoder_layers=Field(
        0, "encoder_decoder: the encoder's depth; 0 = n_layers.", NON_NEGATIVE_INT
    ),
    share_embeddings=Field(True, "encoder_decoder: source and target share the token table."),
    vocab_size=Field(
        128, "Token ids are 0..vocab_size-1 (bytes: 258 = 256 bytes + pad + end).", POSITIVE_INT
    ),
    d_model=Field(128, "Width of the residual stream.", POSITIVE_INT),
    d_ff=Field(512, "Hidden width of the feed-forward block.", POSITIVE_INT),
    n_heads=Field(4, "Attention heads per layer.", POSITIVE_INT),
    d_head=Field(32, "Width of one head's queries, keys and values.", POSITIVE_INT),
    n_layers=Field(2, "Number of blocks (attention + feed-forward).", POSITIVE_INT),
    attention_types=Field(("full",), "Attention types, cycled over the layers."),
    lsh_chunk_len=Field(64, "Chunk length of LSH attention.", POSITIVE_INT),
    local_chunk_len=Field(64, "Chunk length of local attention.", POSITIVE_INT),
    n_buckets=Field(
        0, "LSH buckets per round, even; 0 = automatic (about 2 L / lsh_chunk_len).",
        NON_NEGATIVE_INT,
    ),
    bucket_factors=Field(
        (), "LSH bucket count as a product of even counts, e.g. (32, 64), hashed with their "
        "sum / 2 rotations a round (trax, HF); () = not factorized."
    ),
    lsh_heads_per_step=Field(
        0, "LSH layers run this many heads at a time, recomputed backward; 0 = all at once.",
        NON_NEGATIVE_INT, resume=FREE,
    ),
    n_hashes=Field(1, "LSH hash rounds in training.", POSITIVE_INT),
    causal=Field(True, "Causal masking of model.kind = 'lm' (encoders are bidirectional)."),
    residual=Field(
        "two_stream", "How the blocks join.", one_of(RESIDUALS),
        legacy=("reversible", _from_reversible),
    ),
    position_chunk_size=Field(
        0, "Positions per rematerialized chunk of position-wise work (feed-forward, "
        "LayerNorms, projections, dropout); 0 = all at once.", NON_NEGATIVE_INT, resume=FREE,
        legacy=("ff_chunk_size", _from_ff_chunk_size),
    ),
    ff_activation=Field("gelu", "Feed-forward nonlinearity.", one_of(FF_ACTIVATIONS)),
    layer_norm_eps=Field(
        1e-6, "Epsilon of every LayerNorm (HF Reformer checkpoints: 1e-12).", OPEN_FRACTION
    ),
    positional=Field("learned", "Positional encoding.", one_of(POSITIONAL)),
    max_len=Field(2048, "Longest sequence the learned positional table covers.", POSITIVE_INT),
    axial_shape=Field(
        (), "Axial positions: grid (s_1, ..., s_n), n >= 2 axes (e.g. (64, 64, 3)), the last "
        "fastest; its product >= the longest sequence."
    ),
    axial_dims=Field(
        (), "Axial positions: widths (d_1, ..., d_n), one per axis of axial_shape (e.g. "
        "(384, 384, 256)), concatenated; they add up to d_model."
    ),
    dropout=Field(0.0, "Dropout on residual branches.", FRACTION),
    attention_dropout=Field(0.0, "Dropout on attention weights.", FRACTION),
    dtype=Field("float32", "Activation dtype (parameters stay float32).", one_of(DTYPES)),
    loss_chunk_size=Field(
        0, "Final LayerNorm, logits and loss this many positions at a time; 0 = all.",
        NON_NEGATIVE_INT, resume=FREE,
    ),
)  # fmt: skip

DATA = _group(
    FREE,
    name=Field(
        "duplication", "The data set: 'enwik8' (TFDS builder; official zip or data.path) and "
        "'text' (a local byte file) split 90/5/5 with ids = byte + 2; synthetic tasks of "
        "reformer/data/duplication.py; 'translation' (aligned text files).", one_of(DATASETS),
    ),
    seq_len=Field(128, "Tokens per training sequence (encoder_decoder: per target).", POSITIVE_INT),
    source_len=Field(0, "encoder_decoder: tokens per source sequence.", NON_NEGATIVE_INT),
    word_len=Field(63, "Duplication tasks: |w|; sequences are 0 w 0 w (seq_len = 2 |w| + 2)."),
    path=Field("", "File (raw or zip; local or gs://) for 'enwik8' (optional), 'text' (required)."),
    tfds_dir=Field("", "Where TFDS writes prepared data (local); '' = TFDS's default."),
    train_files=Field(
        "", "translation: the training pair, '{lang}' = data.source_lang / target_lang."
    ),
    validation_files=Field("", "translation: the validation pair (e.g. DIR/val.{lang})."),
    test_files=Field("", "translation: the test pair, named the same way."),
    source_lang=Field("en", "translation: the source language ('{lang}' in its file names)."),
    target_lang=Field("de", "translation: the target language."),
    vocab_path=Field("", "translation: SentencePiece model ('' = WORKDIR/vocab.model, made)."),
    batch_tokens=Field(4096, "translation: padded positions per training batch."),
    tfds_name=Field(
        "", "translation: a TFDS dataset (e.g. 'wmt14_translate/de-en') in place of the files."
    ),
    image_shape=Field(
        (), "images: (height, width, channels) of every image; a sequence is its sub-pixels "
        "in raster order, channels of a pixel together (seq_len = their product)."
    ),
    image_train=Field(
        "", "images: the training images: a directory or .tar of JPEG/PNG files (class folders "
        "allowed), or a glob of downsampled-ImageNet .npz files."
    ),
    image_test=Field("", "images: the test images, the same way ('' = no test split)."),
    image_validation=Field(
        0, "images: the last this many training images (in name order) are the validation "
        "split, never trained on.", NON_NEGATIVE_INT,
    ),
    image_validation_per_folder=Field(
        False, "images: take the validation images from the end of every folder (class) in "
        "equal shares, not from the end of the whole list (which holds the last classes)."
    ),
    image_resize=Field(False, "images: resize images of another size (default: refuse them)."),
    image_cache=Field(
        "", "images: local directory of the decoded images ('' = ~/.cache/reformer/images)."
    ),
)  # fmt: skip

TRAIN = _group(
    FREE,
    num_steps=Field(
        1000, "Total optimizer steps; a resumed run continues to this step.", POSITIVE_INT
    ),
    batch_size=Field(16, "Global batch size (sequences per step, over all devices).", POSITIVE_INT),
    seed=Field(0, "Seed for parameters, data order, dropout and hashing."),
    log_every=Field(50, "Steps between progress lines and metrics records.", POSITIVE_INT),
    eval_every=Field(
        250, "Steps between evaluations (and at the end); 0 = only at the end.", NON_NEGATIVE_INT
    ),
    checkpoint_every=Field(250, "Steps between checkpoints (and at the end).", POSITIVE_INT),
    keep_checkpoints=Field(3, "How many recent checkpoints to keep.", POSITIVE_INT),
    grad_accum_steps=Field(
        1, "Micro-batches per optimizer step, their gradients summed (less memory).", POSITIVE_INT
    ),
    label_smoothing=Field(0.0, "Targets mixed with this much of a uniform distribution.", FRACTION),
    init_from=Field(
        "", "Workdir whose latest parameters start a new run (fresh optimizer, step 0; "
        "resuming comes first); '' = random initialization."
    ),
    lock_renew_every=Field(
        30.0, "Seconds between renewals of the workdir's lock (WORKDIR/lock.json); a lock "
        "not renewed for 3 of them is taken over by the next run.", POSITIVE_FINITE
    ),
    storage_timeout=Field(
        300.0, "Seconds Cloud Storage may go without answering before the run stops "
        "(exit status 75; running it again resumes).", POSITIVE_FINITE
    ),
)  # fmt: skip

MESH = _group(
    FREE,
    data=Field(-1, "Devices on the data axis; -1 = all devices not on fsdp."),
    fsdp=Field(1, "Devices sharing the parameters (FSDP); -1 = all devices not on data."),
)

OPTIMIZER = _group(
    FREE,
    name=Field("adam", "The optimizer.", one_of(OPTIMIZERS), resume=SAME),
    learning_rate=Field(1e-3, "Peak learning rate, reached at the end of warmup.", POSITIVE_FINITE),
    warmup_steps=Field(100, "Linear warmup from 0.", NON_NEGATIVE_INT),
    schedule=Field(
        "rsqrt", "After warmup: 'rsqrt' (lr * sqrt(warmup / step)) or 'constant'.",
        one_of(SCHEDULES),
    ),
    clip_norm=Field(1.0, "Global gradient-norm clipping; 0 = off.", NON_NEGATIVE, resume=ON_OFF),
    weight_decay=Field(
        0.0, "Decoupled weight decay (AdamW); 0 = plain Adam.", NON_NEGATIVE, resume=ON_OFF
    ),
    b1=Field(0.9, "Adam beta1.", FRACTION),
    b2=Field(0.98, "Adam beta2.", FRACTION),
    eps=Field(1e-9, "Adam epsilon (trax's 1e-9).", POSITIVE_FINITE),
)  # fmt: skip

EVAL = _group(
    FREE,
    num_batches=Field(4, "Batches per evaluation during training.", POSITIVE_INT),
    batch_size=Field(16, "Sequences per evaluation batch (global).", POSITIVE_INT),
    n_hashes=Field(0, "LSH hash rounds at evaluation; 0 = model.n_hashes.", NON_NEGATIVE_INT),
    seed=Field(12345, "Seed of the evaluation data (kept apart from training data)."),
    attention_types=Field(
        (), "Attention types at evaluation with the same weights, e.g. ('full_shared_qk',) "
        "for an 'lsh' model (paper, Table 2); () = as trained."
    ),
    split=Field("validation", "The split `reformer.evaluate` scores.", one_of(SPLITS)),
    stride=Field(
        0, "Byte data: sliding windows advancing this many bytes; 0 = seq_len.", NON_NEGATIVE_INT
    ),
    cached=Field(False, "Score through the decoding caches, as sampling runs."),
    free_running=Field(
        False, "encoder_decoder: also decode every source greedily and report exact_match."
    ),
    beam_size=Field(4, "translation: beams when decoding the split; 0 = token metrics only."),
    alpha=Field(0.6, "Beam search's length penalty (the authors' value)."),
)  # fmt: skip

# The groups, in the order of `config.to_json()`.
GROUPS: dict[str, dict[str, Field]] = {
    "model": MODEL,
    "data": DATA,
    "train": TRAIN,
    "mesh": MESH,
    "optimizer": OPTIMIZER,
    "eval": EVAL,
}


def fields():
    """`(group, name, Field)` of every field, in schema order."""
    for group, members in GROUPS.items():
        for name, field in members.items():
            yield group, name, field


def default_config() -> ml_collections.ConfigDict:
    """All fields at their defaults (a small model on the duplication task)."""
    return ml_collections.ConfigDict(
        {
            group: {name: f.default for name, f in members.items()}
            for group, members in GROUPS.items()
        }
    )


def resume_values(config: dict) -> dict[str, Any]:
    """What a resumed run must keep, from a config as a dict (a saved `config.json`):
    `{"group.name": value}` of SAME fields, `{"group.name > 0": bool}` of ON_OFF ones. Only
    fields the dict holds (a workdir written before a field existed does not name it)."""
    out = {}
    for group, name, field in fields():
        values = config.get(group) or {}
        if field.resume not in (SAME, ON_OFF) or name not in values:
            continue
        value = values[name]
        if field.resume == ON_OFF:
            out[f"{group}.{name} > 0"] = value > 0
        else:
            out[f"{group}.{name}"] = list(value) if isinstance(value, tuple | list) else value
    return out
