"""HuggingFace Reformer checkpoints (`ReformerModelWithLMHead.save_pretrained`) as this
project's config and parameters.

    config = config_from_hf(json.load(open("DIR/config.json")))
    params = params_from_hf(read_state_dict("DIR"), config)

The two models compute the same function (tested to 1e-4 in `tests/test_convert_hf.py`)
except for one convention: this model shifts its inputs right itself (position t reads token
t - 1, as trax does), while HF reads token t at position t. So HF's logits for input ids
`[0, t_0, ..., t_{L-2}]` are ours for tokens `[t_0, ..., t_{L-1}]`. The published trax
weights (`google/reformer-enwik8`) were trained with the shift, which this model restores.

The weights are placed by the table of `hf_names.weights`, which the export (`hf_export.py`)
reads the other way. `convert` writes both into a new workdir with a config file
(`scripts/convert_hf_checkpoint.py` is its command line). Factorized bucket counts (a list
`num_buckets`) become `model.bucket_factors`. Settings this project cannot express (other
chunk neighbourhoods, an encoder without causal masking, other activations, tied output
weights, axial positions of other than two axes) are refused with a ConfigError that names
the HF field.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reformer import storage
from reformer.config import default_config, load_config_file
from reformer.errors import ConfigError
from reformer.interop import hf_names
from reformer.interop.hf_names import ACTIVATIONS
from reformer.model import ModelConfig, init_params, make_model
from reformer.training import checkpoints

# What an HF config without these fields means here.
ABSENT = {"num_hashes": 1, "layer_norm_eps": 1e-12, "hidden_dropout_prob": 0.0}
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _period(layers: list[str]) -> tuple[str, ...]:
    """The shortest pattern whose repeats give `layers` (our `attention_types`)."""
    n = len(layers)
    for p in range(1, n + 1):
        if n % p == 0 and layers == layers[:p] * (n // p):
            return tuple(layers[:p])
    raise AssertionError("unreachable: the whole list is a period")


def hf_auto_buckets(seq_len: int, chunk_len: int, max_positions: int) -> int | list[int]:
    """The bucket count HF picks when `num_buckets` is None (`_set_num_buckets`)."""
    power = (2 * (seq_len // chunk_len)).bit_length() - 1
    limit = 2 * max(int((max_positions // chunk_len) ** 0.5), chunk_len)
    if 2**power > limit:
        return [2 ** (power // 2), 2 ** (power - power // 2)]
    return 2**power


def _inexpressible(hf: Mapping) -> list[str]:
    """The settings of an HF `config.json` this project cannot express, each as
    `field = value: why` (empty if it converts)."""
    problems: list[str] = []

    def need(ok: bool, field: str, message: str) -> None:
        if not ok:
            problems.append(f"{field} = {hf.get(field)!r}: {message}")

    model_type = hf.get("model_type", "reformer")
    need(model_type == "reformer", "model_type", "only Reformer checkpoints convert")
    need(bool(hf.get("is_decoder", False)), "is_decoder", "only causal language models convert")
    layers = list(hf.get("attn_layers", []))
    need(
        bool(layers) and set(layers) <= {"lsh", "local"},
        "attn_layers",
        "must be a list of 'lsh' and 'local'",
    )
    n_layers = hf.get("num_hidden_layers", len(layers))
    need(n_layers == len(layers), "num_hidden_layers", f"must equal len(attn_layers)={len(layers)}")
    for prefix in ("lsh", "local"):
        need(
            hf.get(f"{prefix}_num_chunks_before", 1) == 1,
            f"{prefix}_num_chunks_before",
            "this project attends to exactly one chunk before",
        )
        need(
            hf.get(f"{prefix}_num_chunks_after", 0) == 0,
            f"{prefix}_num_chunks_after",
            "this project attends to no chunk after (causal)",
        )
    act = hf.get("hidden_act", "relu")
    need(act in ACTIVATIONS, "hidden_act", f"must be one of {sorted(ACTIVATIONS)}")
    if hf.get("axial_pos_embds", True):
        for field in ("axial_pos_shape", "axial_pos_embds_dim"):
            need(len(hf.get(field, ())) == 2, field, "this project's axial positions have two axes")
    need(
        not hf.get("tie_word_embeddings", False),
        "tie_word_embeddings",
        "this project's output layer has its own weights",
    )
    return problems


def _set_layers(m: ml_collections.ConfigDict, hf: Mapping, layers: list[str]) -> None:
    """Sizes, the attention pattern and each layer's settings into `config.model` `m`."""
    for hf_field, field, kind in hf_names.SAME_FIELDS:
        value = hf.get(hf_field, ABSENT[hf_field]) if hf_field in ABSENT else hf[hf_field]
        m[field] = kind(value)
    m.n_layers = len(layers)
    m.attention_types = _period(layers)
    m.lsh_chunk_len = int(hf.get("lsh_attn_chunk_length") or 64)
    m.local_chunk_len = int(hf.get("local_attn_chunk_length") or 64)
    m.causal = True
    m.residual = "reversible"  # HF's layers are; `two_stream` is the same function.
    m.ff_activation = ACTIVATIONS[hf.get("hidden_act", "relu")]
    # One attention dropout here; HF has one per attention type: local's if the model has
    # local layers, else LSH's.
    kinds = "local" if "local" in layers else "lsh"
    m.attention_dropout = float(hf.get(f"{kinds}_attention_probs_dropout_prob", 0.0))


def _set_positions(m: ml_collections.ConfigDict, hf: Mapping) -> None:
    """Axial (two axes) or learned positional embeddings, and `max_len`, into `m`."""
    if hf.get("axial_pos_embds", True):
        m.positional = "axial"
        m.axial_shape = tuple(int(a) for a in hf["axial_pos_shape"])
        m.axial_dims = tuple(int(d) for d in hf["axial_pos_embds_dim"])
        m.max_len = math.prod(m.axial_shape)
    else:
        m.positional = "learned"
        m.max_len = int(hf.get("max_position_embeddings", 4096))


def _set_buckets(m: ml_collections.ConfigDict, hf: Mapping, layers: list[str], seq_len: int):
    """`n_buckets` (HF's choice for `seq_len` when `num_buckets` is None) and, for a list of
    bucket factors, `bucket_factors` into `m`."""
    buckets = hf.get("num_buckets")
    if buckets is None and "lsh" in layers:
        max_positions = int(hf.get("max_position_embeddings", 4096))
        buckets = hf_auto_buckets(seq_len, m.lsh_chunk_len, max_positions)
    if isinstance(buckets, list | tuple):
        if not buckets or any(int(b) < 2 or int(b) % 2 for b in buckets):
            raise ConfigError(
                f"this HuggingFace Reformer config cannot be expressed here:\n  num_buckets = "
                f"{list(buckets)!r}: each factor must be an even count >= 2"
            )
        if len(buckets) > 1:  # Factorized: hashed as HF does (hashing.buckets_from_rotated).
            m.bucket_factors = tuple(int(b) for b in buckets)
        buckets = math.prod(int(b) for b in buckets)
    m.n_buckets = int(buckets or 0)


def config_from_hf(hf: Mapping, seq_len: int | None = None) -> ml_collections.ConfigDict:
    """This project's config for the model of an HF `config.json` (a dict).

    `seq_len` (default: the axial grid, or `max_position_embeddings`) becomes
    `data.seq_len`; training, data and optimizer fields keep `default_config()`'s values.
    """
    problems = _inexpressible(hf)
    if problems:
        raise ConfigError(
            "this HuggingFace Reformer config cannot be expressed here:\n  " + "\n  ".join(problems)
        )
    layers = list(hf["attn_layers"])
    c = default_config()
    _set_layers(c.model, hf, layers)
    _set_positions(c.model, hf)
    c.data.seq_len = int(seq_len or c.model.max_len)
    _set_buckets(c.model, hf, layers, c.data.seq_len)
    # Byte-level (ids = byte + 2, google/reformer-enwik8) or other text data (data.path).
    c.data.name = "enwik8" if c.model.vocab_size == 258 else "text"
    return c


def read_state_dict(directory: str) -> dict[str, np.ndarray]:
    """The weights of a `save_pretrained` directory as NumPy arrays (safetensors needs the
    `safetensors` package, `pytorch_model.bin` needs torch)."""
    for name in WEIGHT_FILES:
        path = storage.join(directory, name)
        if not storage.exists(path):
            continue
        if name.endswith(".safetensors"):
            try:
                from safetensors.numpy import load
            except ImportError as e:
                raise ConfigError(f"reading {path} needs `pip install safetensors`") from e
            return dict(load(storage.read_bytes(path)))
        try:
            import torch
        except ImportError as e:
            raise ConfigError(f"reading {path} needs torch (pip install torch==2.13.0)") from e
        raw = io.BytesIO(storage.read_bytes(path))
        state = torch.load(raw, map_location="cpu", weights_only=True)
        return {k: v.float().numpy() for k, v in state.items()}
    raise ConfigError(
        f"{directory} holds none of {', '.join(WEIGHT_FILES)} (a save_pretrained directory)"
    )


class _Weights:
    """An HF state dict (float32, without the `reformer.` prefix) read weight by weight,
    each checked against its HF shape; it remembers which were read."""

    def __init__(self, state: Mapping[str, np.ndarray]):
        self.state = {
            k.removeprefix(hf_names.BASE_PREFIX): np.asarray(v, np.float32)
            for k, v in state.items()
        }
        self.used: set[str] = set()

    def take(self, w: hf_names.Weight) -> np.ndarray:
        """`w` in this model's layout (under its first name the checkpoint holds; all of
        its names count as read)."""
        key = next((k for k in (w.hf, *w.aliases) if k in self.state), w.hf)
        if key not in self.state:
            raise ConfigError(f"the HF checkpoint has no weight {key!r}")
        self.used.update(k for k in (w.hf, *w.aliases) if k in self.state)
        value = self.state[key]
        if value.shape != w.hf_shape:
            raise ConfigError(f"HF weight {key} has shape {value.shape}, expected {w.hf_shape}")
        return w.to_ours(value)

    def check_all_used(self) -> None:
        unused = sorted(set(self.state) - self.used)
        if unused:
            raise ConfigError(
                "the HF checkpoint has weights this model has no place for: "
                + ", ".join(unused[:10])
            )


def params_from_hf(state: Mapping[str, np.ndarray], config: ml_collections.ConfigDict) -> dict:
    """This model's parameter tree (float32 arrays) from an HF `ReformerModelWithLMHead`
    (or `ReformerForMaskedLM`) state dict (NumPy arrays, as `read_state_dict` gives), by
    the table of `hf_names.weights`. Every HF weight must find its place."""
    w = _Weights(state)
    params = hf_names.assemble(config.model, w.take)
    w.check_all_used()
    return jax.tree.map(jnp.asarray, params)


def _literal(value):
    """`value` as the config file writes it (lists as tuples)."""
    return tuple(value) if isinstance(value, list) else value


def _changed_model_fields(config: ml_collections.ConfigDict) -> list[str]:
    """The `config.model` fields whose values differ from `default_config()`'s, in the
    order `default_config()` lists them."""
    defaults = default_config().model
    return [
        name for name in defaults.keys() if _literal(config.model[name]) != _literal(defaults[name])
    ]


def config_source(config: ml_collections.ConfigDict, source: str) -> str:
    """The text of a config file that rebuilds `config` from `default_config()`: the model
    fields that differ from their defaults, `data.name` and `data.seq_len`."""
    lines = [
        f'"""Converted from the HuggingFace Reformer checkpoint {source}',
        "by scripts/convert_hf_checkpoint.py. Fields not set here keep the values of",
        'reformer.config.default_config(); set them on the command line."""',
        "",
        "from reformer.config import default_config",
        "",
        "",
        "def get_config(variant: str = ''):",
        "    del variant",
        "    c = default_config()",
    ]
    for name in _changed_model_fields(config):
        lines.append(f"    c.model.{name} = {_literal(config.model[name])!r}")
    lines.append(f"    c.data.name = {config.data.name!r}")
    lines.append(f"    c.data.seq_len = {config.data.seq_len!r}")
    lines.append("    return c")
    return "\n".join(lines) + "\n"


def convert(hf_dir: str, out: str, seq_len: int | None = None) -> str:
    """Converts the `save_pretrained` directory `hf_dir` into a new workdir `out`:
    `out/config.py` (a config file of the model), `out/config.json` and `out/checkpoints/0/`
    (the parameters only). Returns the config file's path."""
    storage.check(hf_dir, "--hf_dir")
    if storage.isdir(storage.join(storage.check(out, "--out"), "checkpoints")):
        raise ConfigError(f"--out {out} already holds checkpoints; give a new directory")
    path = storage.join(hf_dir, "config.json")
    if not storage.isfile(path):
        raise ConfigError(f"--hf_dir {hf_dir}: no config.json (a save_pretrained directory)")
    hf_config = json.loads(storage.read_text(path))
    config = config_from_hf(hf_config, seq_len)
    storage.prepare_dir(out, "--out")
    config_path = storage.join(out, "config.py")
    source = str(storage.path(hf_dir))
    storage.write_text(config_path, config_source(config, source))
    config = load_config_file(config_path)  # What users will load.

    params = params_from_hf(read_state_dict(hf_dir), config)
    model = make_model(ModelConfig.from_config(config.model))
    shapes = jax.eval_shape(
        lambda k: init_params(model, k, 1, config.data.seq_len), jax.random.key(0)
    )
    problems = checkpoints.param_mismatches(params, shapes)
    if problems:  # A converter bug, not a user error.
        raise AssertionError("converted parameters do not fit the model: " + "; ".join(problems))

    manager = checkpoints.make_manager(out, config.train.keep_checkpoints)
    checkpoints.save(manager, 0, {"params": params}, {"converted_from": source})
    manager.wait_until_finished()
    manager.close()
    checkpoints.write_config(out, config)
    n = sum(p.size for p in jax.tree.leaves(params))
    print(
        f"Converted {hf_dir} ({n:,} parameters, {config.model.n_layers} layers "
        f"{tuple(config.model.attention_types)}) to {out}; config file {config_path}"
    )
    return config_path
