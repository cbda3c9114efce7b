"""`validate(config, num_devices)`: every field's rule from the schema and the
constraints between fields, collected in one `Report` so that a config with several problems
gets one error listing all of them, each naming its field."""

from __future__ import annotations

import difflib
import math

import ml_collections
from absl import logging

from reformer import storage
from reformer.config.legacy import migrate
from reformer.config.schema import (
    ATTENTION_TYPES,
    KIND_DATASETS,
    SYNTHETIC_VOCAB,
    default_config,
    fields,
)
from reformer.errors import ConfigError


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


def _check_fields(r: Report) -> None:
    """Every field with a rule in the schema (`Field.rule`)."""
    for group, name, field in fields():
        if field.rule is not None:
            v = r.config[group][name]
            r.check(field.rule.test(v), f"{group}.{name}", f"must be {field.rule.text}, got {v!r}")


def _check_modes(r: Report) -> None:
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
        f"{unknown[0]!r} is not one of {tuple(ATTENTION_TYPES)}" if unknown else "",
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
            f"{bad[0]!r} is not one of {tuple(ATTENTION_TYPES)}"
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
        f"{bad[0]!r} is not one of {tuple(ATTENTION_TYPES)}" if bad else "",
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
        shape, dims = m.axial_shape, m.axial_dims
        shape, dims = (tuple(v) if isinstance(v, (list, tuple)) else v for v in (shape, dims))

        def axes_ok(v) -> bool:
            return isinstance(v, tuple) and len(v) >= 2 and all(_is_int(a) and a > 0 for a in v)

        shape_ok = r.check(
            axes_ok(shape),
            "model.axial_shape",
            f"must be two or more positive integers (s_1, ..., s_n), the grid of positions, "
            f"e.g. (64, 64, 3); got {shape!r}",
        )
        dims_ok = r.check(
            axes_ok(dims),
            "model.axial_dims",
            f"must be two or more positive integers (d_1, ..., d_n), one width per axis of "
            f"model.axial_shape, e.g. (384, 384, 256); got {dims!r}",
        )
        if shape_ok and dims_ok:
            dims_ok = r.check(
                len(dims) == len(shape),
                "model.axial_dims",
                f"{dims} has {len(dims)} widths for the {len(shape)} axes of "
                f"model.axial_shape={shape}: one width per axis",
            )
        if dims_ok and r.fine("model.d_model"):
            r.check(
                sum(dims) == m.d_model,
                "model.axial_dims",
                f"{dims} adds up to {sum(dims)}; the widths must add up to "
                f"model.d_model={m.d_model}",
            )
        if shape_ok:
            grid = " x ".join(map(str, shape))
            r.check(
                math.prod(shape) >= seq,
                "model.axial_shape",
                f"{shape} covers {grid} = {math.prod(shape)} positions, fewer than "
                f"data.seq_len={seq}: the product must be at least data.seq_len",
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
    if d.name == "images":
        _check_images(r)
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


def _check_images(r: Report) -> None:
    m, d, e = r.config.model, r.config.data, r.config.eval
    shape = tuple(d.image_shape)
    if r.check(
        len(shape) == 3 and all(_is_int(a) and a > 0 for a in shape),
        "data.image_shape",
        f"must be three positive integers (height, width, channels), got {shape}",
    ) and r.fine("data.seq_len"):
        r.check(
            d.seq_len == math.prod(shape),
            "data.seq_len",
            f"an image of {shape} is {math.prod(shape)} sub-pixels, so seq_len = "
            f"{math.prod(shape)}; got {d.seq_len}",
        )
    if r.fine("model.vocab_size"):
        r.check(
            m.vocab_size >= 256,
            "model.vocab_size",
            f"sub-pixel values are ids 0..255, so vocab_size >= 256; got {m.vocab_size}",
        )
    if r.check(bool(d.image_train), "data.image_train", "images need their training images"):
        _check_path(r, "data.image_train")
    if d.image_test:
        _check_path(r, "data.image_test")
    if d.image_cache and _check_path(r, "data.image_cache"):
        r.check(
            not storage.is_remote(d.image_cache),
            "data.image_cache",
            f"{d.image_cache}: the decoded images are read through local files; give a local "
            "directory",
        )
    if r.fine("eval.split", "data.image_validation"):
        need = {
            "validation": ("data.image_validation", d.image_validation),
            "test": ("data.image_test", d.image_test),
        }.get(e.split)
        r.check(
            need is None or bool(need[1]),
            "eval.split",
            f"{e.split!r} has no images: set {need[0] if need else ''}",
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


def validate(
    config: ml_collections.ConfigDict,
    num_devices: int | None = 1,
    extra_problems: list[tuple[str, str]] = (),
) -> None:
    """Checks every field and cross-field constraint before anything compiles.

    Raises one ConfigError listing every problem (unknown fields, missing fields and bad
    values together), each with its field and the allowed values. `num_devices` is the
    number of devices of the whole run (all processes); None skips the checks that need it
    (the flags are parsed before the devices are known). `extra_problems` are `(field,
    message)` pairs found before (command-line overrides of unknown fields).
    """
    for note in migrate(config):
        logging.warning("config: %s (the old name still loads; use the new one)", note)
    report = Report(config)
    for field, message in extra_problems:
        report.add(field, message)
    known, given = _keys(default_config()), _keys(config)
    for name in sorted(set(given) - set(known)):
        report.add(name, f"unknown config field{_did_you_mean(name, known)}")
    missing = sorted(set(known) - set(given))
    for name in missing:
        report.add(name, "missing (every field of reformer/config/schema.py must be present)")
    if not missing:
        for check in (
            _check_fields,
            _check_modes,
            _check_layers,
            _check_positions,
            _check_data,
            _check_encoder_decoder,
            _check_init_from,
        ):
            check(report)
        if num_devices is not None:
            _check_parallelism(report, num_devices)
    report.raise_if_any()


def _did_you_mean(name: str, known) -> str:
    """` (did you mean config.X?)` for the closest known field, or ``."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    return f" (did you mean config.{close[0]}?)" if close else ""


def unknown_field_problem(name: str) -> tuple[str, str]:
    """The `(field, message)` problem of an override of `name` (`group.field`), which is
    not a field of the schema."""
    return name, f"unknown config field{_did_you_mean(name, _keys(default_config()))}"
