"""HuggingFace Reformer checkpoints (`ReformerModelWithLMHead.save_pretrained`) as this
project's config and parameters.

    config = config_from_hf(json.load(open("DIR/config.json")))
    params = params_from_hf(read_state_dict("DIR"), config)

The two models compute the same function (tested to 1e-4 in `tests/test_convert_hf.py`)
except for one convention: this model shifts its inputs right itself (position t reads token
t - 1, as trax does), while HF reads token t at position t. So HF's logits for input ids
`[0, t_0, ..., t_{L-2}]` are ours for tokens `[t_0, ..., t_{L-1}]`. The published trax
weights (`google/reformer-enwik8`) were trained with the shift, which this model restores.

Factorized bucket counts (a list `num_buckets`) become `model.bucket_factors`. Settings
this project cannot express (other chunk neighbourhoods, an encoder without causal masking,
other activations) are refused with a ConfigError that
names the HF field.
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
from reformer.config.schema import ConfigError, default_config, load_config_file
from reformer.model.blocks import layer_name

# HF `hidden_act` -> `model.ff_activation`. HF's "gelu" is the erf form, "gelu_new" the tanh
# approximation (flax's `nn.gelu` default).
ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu_exact",
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
}
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


def config_from_hf(hf: Mapping, seq_len: int | None = None) -> ml_collections.ConfigDict:
    """This project's config for the model of an HF `config.json` (a dict).

    `seq_len` (default: the axial grid, or `max_position_embeddings`) becomes
    `data.seq_len`; training, data and optimizer fields keep `default_config()`'s values.
    """
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
    axial = bool(hf.get("axial_pos_embds", True))
    if axial:
        need(
            len(hf.get("axial_pos_shape", ())) == 2,
            "axial_pos_shape",
            "this project's axial positions have two axes",
        )
        need(
            len(hf.get("axial_pos_embds_dim", ())) == 2,
            "axial_pos_embds_dim",
            "this project's axial positions have two axes",
        )
    need(
        not hf.get("tie_word_embeddings", False),
        "tie_word_embeddings",
        "this project's output layer has its own weights",
    )
    if problems:
        raise ConfigError(
            "this HuggingFace Reformer config cannot be expressed here:\n  " + "\n  ".join(problems)
        )

    c = default_config()
    m = c.model
    m.vocab_size = int(hf["vocab_size"])
    m.d_model = int(hf["hidden_size"])
    m.d_ff = int(hf["feed_forward_size"])
    m.n_heads = int(hf["num_attention_heads"])
    m.d_head = int(hf["attention_head_size"])
    m.n_layers = len(layers)
    m.attention_types = _period(layers)
    m.lsh_chunk_len = int(hf.get("lsh_attn_chunk_length") or 64)
    m.local_chunk_len = int(hf.get("local_attn_chunk_length") or 64)
    m.n_hashes = int(hf.get("num_hashes", 1))
    m.causal = True
    m.residual = "reversible"  # HF's layers are; `two_stream` is the same function.
    m.ff_activation = ACTIVATIONS[act]
    m.layer_norm_eps = float(hf.get("layer_norm_eps", 1e-12))
    m.dropout = float(hf.get("hidden_dropout_prob", 0.0))
    # One attention dropout here; HF has one per attention type.
    kinds = "local" if "local" in layers else "lsh"
    m.attention_dropout = float(hf.get(f"{kinds}_attention_probs_dropout_prob", 0.0))
    max_positions = int(hf.get("max_position_embeddings", 4096))
    if axial:
        m.positional = "axial"
        m.axial_shape = tuple(int(a) for a in hf["axial_pos_shape"])
        m.axial_dims = tuple(int(d) for d in hf["axial_pos_embds_dim"])
        m.max_len = math.prod(m.axial_shape)
    else:
        m.positional = "learned"
        m.max_len = max_positions
    c.data.seq_len = int(seq_len or m.max_len)
    buckets = hf.get("num_buckets")
    if buckets is None and "lsh" in layers:
        buckets = hf_auto_buckets(c.data.seq_len, m.lsh_chunk_len, max_positions)
    if isinstance(buckets, list | tuple):
        if not buckets or any(int(b) < 2 or int(b) % 2 for b in buckets):
            raise ConfigError(
                f"this HuggingFace Reformer config cannot be expressed here:\n  num_buckets = "
                f"{list(buckets)!r}: each factor must be an even count >= 2"
            )
        if len(buckets) > 1:  # Factorized: hashed as HF does (lsh.buckets_from_rotated).
            m.bucket_factors = tuple(int(b) for b in buckets)
        buckets = math.prod(int(b) for b in buckets)
    m.n_buckets = int(buckets or 0)
    # Byte-level (ids = byte + 2, google/reformer-enwik8) or other text data (data.path).
    c.data.name = "enwik8" if m.vocab_size == 258 else "text"
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


def params_from_hf(state: Mapping[str, np.ndarray], config: ml_collections.ConfigDict) -> dict:
    """This model's parameter tree (float32 arrays) from an HF `ReformerModelWithLMHead`
    state dict (NumPy arrays, as `read_state_dict` gives)."""
    m = config.model
    d, h, k = m.d_model, m.n_heads, m.d_head
    pattern = tuple(m.attention_types)
    state = {key.removeprefix("reformer."): np.asarray(v, np.float32) for key, v in state.items()}
    used: set[str] = set()

    def take(key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in state:
            raise ConfigError(f"the HF checkpoint has no weight {key!r}")
        used.add(key)
        value = state[key]
        if value.shape != shape:
            raise ConfigError(f"HF weight {key} has shape {value.shape}, expected {shape}")
        return value

    def heads_in(key):  # torch Linear [H*K, D] -> DenseGeneral kernel [D, H, K]
        return take(key, (h * k, d)).T.reshape(d, h, k)

    def layer_params(i: int, kind: str) -> dict:
        pre = f"encoder.layers.{i}"
        sa = f"{pre}.attention.self_attention"
        names = ("query_key", "value") if kind == "lsh" else ("query", "key", "value")
        attn = {n: {"kernel": heads_in(f"{sa}.{n}.weight")} for n in names}
        attn["out"] = {
            "kernel": take(f"{pre}.attention.output.dense.weight", (d, h * k)).T.reshape(h, k, d)
        }
        ff = f"{pre}.feed_forward"
        return {
            "attention": {
                "norm": {
                    "scale": take(f"{pre}.attention.layer_norm.weight", (d,)),
                    "bias": take(f"{pre}.attention.layer_norm.bias", (d,)),
                },
                "attention": attn,
            },
            "feed_forward": {
                "norm": {
                    "scale": take(f"{ff}.layer_norm.weight", (d,)),
                    "bias": take(f"{ff}.layer_norm.bias", (d,)),
                },
                "ff": {
                    "wi_kernel": take(f"{ff}.dense.dense.weight", (m.d_ff, d)).T,
                    "wi_bias": take(f"{ff}.dense.dense.bias", (m.d_ff,)),
                    "wo_kernel": take(f"{ff}.output.dense.weight", (d, m.d_ff)).T,
                    "wo_bias": take(f"{ff}.output.dense.bias", (d,)),
                },
            },
        }

    layers = {}
    for j, kind in enumerate(pattern):
        repeats = [layer_params(i, kind) for i in range(j, m.n_layers, len(pattern))]
        layers[layer_name(j, kind)] = _stack(repeats)

    params = {
        "embed": {"embedding": take("embeddings.word_embeddings.weight", (m.vocab_size, d))},
        "layers": layers,
        "final_norm": {
            "scale": take("encoder.layer_norm.weight", (2 * d,)),
            "bias": take("encoder.layer_norm.bias", (2 * d,)),
        },
        "logits": {
            "kernel": take("lm_head.decoder.weight", (m.vocab_size, 2 * d)).T,
            # HF's output layer adds lm_head.decoder.bias (tied to lm_head.bias, which older
            # files hold alone).
            "bias": take(
                "lm_head.decoder.bias" if "lm_head.decoder.bias" in state else "lm_head.bias",
                (m.vocab_size,),
            ),
        },
    }
    used.update(k for k in ("lm_head.bias", "lm_head.decoder.bias") if k in state)
    if m.positional == "axial":
        (a, b), (d1, d2) = m.axial_shape, m.axial_dims
        params["axial_pos"] = {
            "axial_0": take("embeddings.position_embeddings.weights.0", (a, 1, d1)).reshape(a, d1),
            "axial_1": take("embeddings.position_embeddings.weights.1", (1, b, d2)).reshape(b, d2),
        }
    else:
        params["pos_embed"] = take(
            "embeddings.position_embeddings.embedding.weight", (m.max_len, d)
        )
    unused = sorted(set(state) - used)
    if unused:
        raise ConfigError(
            "the HF checkpoint has weights this model has no place for: " + ", ".join(unused[:10])
        )
    return jax.tree.map(jnp.asarray, params)


# Fields of config.model (and data) written into the generated config file.
MODEL_FIELDS = (
    "vocab_size", "d_model", "d_ff", "n_heads", "d_head", "n_layers", "attention_types",
    "lsh_chunk_len", "local_chunk_len", "n_buckets", "bucket_factors", "n_hashes", "causal",
    "residual",
    "ff_activation", "layer_norm_eps", "positional", "max_len", "axial_shape", "axial_dims",
    "dropout", "attention_dropout",
)  # fmt: skip


def config_source(config, source: str) -> str:
    """The text of a config file that rebuilds `config` from `default_config()`."""
    lines = [
        f'"""Converted from the HuggingFace Reformer checkpoint {source}',
        "by scripts/convert_hf_checkpoint.py. Data, training and optimizer fields are the",
        'defaults of reformer/config/schema.py; set them on the command line."""',
        "",
        "from reformer.config import default_config",
        "",
        "",
        "def get_config(variant: str = ''):",
        "    del variant",
        "    c = default_config()",
    ]
    for name in MODEL_FIELDS:
        value = config.model[name]
        lines.append(f"    c.model.{name} = {tuple(value) if isinstance(value, list) else value!r}")
    lines.append(f"    c.data.name = {config.data.name!r}")
    lines.append(f"    c.data.seq_len = {config.data.seq_len!r}")
    lines.append("    return c")
    return "\n".join(lines) + "\n"


def convert(hf_dir: str, out: str, seq_len: int | None = None) -> str:
    """Converts the `save_pretrained` directory `hf_dir` into a new workdir `out`:
    `out/config.py` (a config file of the model), `out/config.json` and `out/checkpoints/0/`
    (the parameters only). Returns the config file's path."""
    from reformer.training import (
        checkpoints,
        steps,  # Not at the top: steps imports the model.
    )

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
    model = steps.make_model(config)
    shapes = jax.eval_shape(
        lambda k: steps.init_params(model, k, 1, config.data.seq_len), jax.random.key(0)
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


def _stack(trees: list[dict]) -> dict:
    """Stacks equal-structured nested dicts of arrays on a new leading axis."""
    first = trees[0]
    if isinstance(first, dict):
        return {key: _stack([t[key] for t in trees]) for key in first}
    return np.stack(trees)
