"""The default configuration, the allowed values of its fields, and config files.

Every config file in `configs/` starts from `default_config()` and changes fields, so each
experiment names the same fields and `validate` (its checks in `validation.py`) knows
all of them. `validate` runs before any work starts and turns a bad value into one clear error
that names the field.
"""

from __future__ import annotations

import os
import types

import ml_collections

from reformer import storage
from reformer.config.legacy import LEGACY_FIELDS, migrate  # noqa: F401  (re-exported)
from reformer.errors import ConfigError  # noqa: F401  (re-exported)

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
    c.model = _model_fields()
    c.data = _data_fields()
    c.train = _train_fields()
    c.mesh = _mesh_fields()
    c.optimizer = _optimizer_fields()
    c.eval = _eval_fields()
    return c


def _model_fields() -> ml_collections.ConfigDict:
    """The model's fields (the architecture)."""
    m = ml_collections.ConfigDict()
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
    return m


def _data_fields() -> ml_collections.ConfigDict:
    """The data's fields."""
    d = ml_collections.ConfigDict()
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
    # translation: a TFDS dataset in place of the files (its splits train / validation /
    # test), prepared into data.tfds_dir on first use.
    d.tfds_name = ""  # translation: e.g. "wmt14_translate/de-en"; "" = data.*_files
    return d


def _train_fields() -> ml_collections.ConfigDict:
    """The training loop's fields."""
    t = ml_collections.ConfigDict()
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
    return t


def _mesh_fields() -> ml_collections.ConfigDict:
    """The device mesh's fields."""
    s = ml_collections.ConfigDict()
    s.data = -1  # Devices on the data axis; -1 = all devices not on fsdp.
    s.fsdp = 1  # Devices sharing the parameters (FSDP); -1 = all devices not on data.
    return s


def _optimizer_fields() -> ml_collections.ConfigDict:
    """The optimizer's fields."""
    o = ml_collections.ConfigDict()
    o.name = "adam"  # One of OPTIMIZERS.
    o.learning_rate = 1e-3  # Peak learning rate, reached at the end of warmup.
    o.warmup_steps = 100  # Linear warmup from 0.
    o.schedule = "rsqrt"  # After warmup: "rsqrt" (lr * sqrt(warmup / step)) or "constant".
    o.clip_norm = 1.0  # Global gradient-norm clipping; 0 = off.
    o.weight_decay = 0.0  # Decoupled weight decay (AdamW); 0 = plain Adam.
    o.b1 = 0.9  # Adam beta1.
    o.b2 = 0.98  # Adam beta2.
    return o


def _eval_fields() -> ml_collections.ConfigDict:
    """The evaluation's fields."""
    e = ml_collections.ConfigDict()
    e.num_batches = 4  # Batches per evaluation.
    e.batch_size = 16  # Sequences per evaluation batch (global).
    e.n_hashes = 0  # LSH hash rounds at evaluation; 0 = same as model.n_hashes.
    e.seed = 12345  # Seed of the evaluation data (kept apart from training data).
    # E.g. ("full_shared_qk",) scores an "lsh" model with full attention (paper, Table 2).
    e.attention_types = ()  # Attention types at evaluation, same weights; () = as trained.
    e.split = "validation"  # Split evaluated on byte data: one of SPLITS.
    e.stride = 0  # Byte data: sliding windows advancing this many bytes; 0 = seq_len.
    e.cached = False  # Score through the decoding caches as sampling runs.
    # Encoder-decoders (reformer.evaluate): also decode every source greedily through the
    # caches, free-running, and report the share of targets reproduced exactly.
    e.free_running = False  # Report exact_match of greedy decoding (model.kind encoder_decoder).
    # Translation (reformer.evaluate): the split decoded with beam search and scored with
    # sacreBLEU, cased and uncased; the translations are written beside the JSON.
    e.beam_size = 4  # Beams when decoding a translation split; 0 = token metrics only.
    e.alpha = 0.6  # Beam search's length penalty (the authors' value).
    return e


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


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
    """Checks every field and cross-field constraint before anything compiles: one
    ConfigError listing every problem, each with its field and the allowed values.
    `num_devices` is the number of devices of the whole run (all processes)."""
    from reformer.config import validation  # It reads this module's defaults and allowed values.

    validation.validate(config, num_devices)


def mesh_shape(data: int, fsdp: int, num_devices: int) -> tuple[int, int]:
    """`(data, fsdp)` with a -1 resolved to the remaining devices; ConfigError if the sizes
    do not fit `num_devices`."""
    from reformer.config import validation

    return validation.mesh_shape(data, fsdp, num_devices)
