"""The correspondence between this project's Reformer and HuggingFace's, in one place for
both directions (`hf_import.py` reads HF checkpoints, `hf_export.py` writes them): the
activation names, the config fields both name the same way, and every weight with its HF
name, its HF layout and its place in this model's parameter tree.

HF keeps one module per layer (`encoder.layers.<i>`); this model stacks the repeats of each
pattern position on a leading axis (`layers/<j>_<type>`, `model_config.layer_name`), so HF's
layer i is repeat `i // p` of pattern position `i % p` (p = len(attention_types)). HF's
`torch.nn.Linear` weights are `[out, in]`: their transposes, reshaped, are this model's
kernels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping

import numpy as np

from reformer.model.model_config import layer_name

# `model.ff_activation` -> HF `hidden_act`. HF's "gelu" is the erf form, "gelu_new" the tanh
# approximation (flax's `nn.gelu` default, this project's "gelu").
HF_ACTIVATION = {"relu": "relu", "gelu_exact": "gelu", "gelu": "gelu_new"}
# HF `hidden_act` -> `model.ff_activation` (HF names the tanh form twice).
ACTIVATIONS = {hf: ours for ours, hf in HF_ACTIVATION.items()} | {"gelu_pytorch_tanh": "gelu"}

# (HF config field, `config.model` field, type) of the settings both name the same way.
SAME_FIELDS = (
    ("vocab_size", "vocab_size", int),
    ("hidden_size", "d_model", int),
    ("feed_forward_size", "d_ff", int),
    ("num_attention_heads", "n_heads", int),
    ("attention_head_size", "d_head", int),
    ("num_hashes", "n_hashes", int),
    ("layer_norm_eps", "layer_norm_eps", float),
    ("hidden_dropout_prob", "dropout", float),
)

# This model's attention types -> HF's layer kind ("lsh" or "local"). Full attention is HF's
# kind with the same projections, run on a chunk that spans the sequence (`hf_export.py`).
HF_KIND = {"lsh": "lsh", "full_shared_qk": "lsh", "local": "local", "full": "local"}
# Each HF kind's projections (the parameter names are the same here).
PROJECTIONS = {"lsh": ("query_key", "value"), "local": ("query", "key", "value")}

BASE_PREFIX = "reformer."
OLD_BIAS = ("lm_head.bias",)  # HF's base model; the output layer (`lm_head.`) is outside it.


@dataclasses.dataclass(frozen=True)
class Weight:
    """One weight: `hf` its state-dict key (without `BASE_PREFIX`; `aliases` are keys HF
    may also hold it under), `hf_shape` its HF shape, `path` its place in this model's
    parameter tree, `layer` its index on a layer group's leading axis (None outside the
    layers), `shape` its shape here (without that axis), and `transposed`: HF holds the
    transpose (a torch `Linear` weight), reshaped."""

    hf: str
    hf_shape: tuple[int, ...]
    path: tuple[str, ...]
    layer: int | None
    shape: tuple[int, ...]
    transposed: bool = False
    aliases: tuple[str, ...] = ()

    def to_ours(self, hf_array: np.ndarray) -> np.ndarray:
        a = np.asarray(hf_array)
        return (a.T if self.transposed else a).reshape(self.shape)

    def to_hf(self, array: np.ndarray) -> np.ndarray:
        a = np.asarray(array)
        if self.transposed:
            return a.reshape(self.hf_shape[::-1]).T
        return a.reshape(self.hf_shape)


def hf_key(name: str) -> str:
    """The full state-dict key of `name` in HF's models with a head."""
    return name if name.startswith("lm_head.") else BASE_PREFIX + name


def _layer_weights(m, i: int) -> Iterator[Weight]:
    """Layer `i`'s weights: its attention half (LayerNorm, projections, output projection)
    and its feed-forward half (LayerNorm, two dense layers)."""
    p = len(m.attention_types)
    kind = m.attention_types[i % p]
    d, h, k, f = m.d_model, m.n_heads, m.d_head, m.d_ff
    group = ("layers", layer_name(i % p, kind))
    pre, r = f"encoder.layers.{i}", i // p

    def weight(hf, hf_shape, path, shape, transposed=False):
        return Weight(hf, hf_shape, group + path, r, shape, transposed)

    for half, norm in (("attention", "attention"), ("feed_forward", "feed_forward")):
        for hf_name, ours in (("weight", "scale"), ("bias", "bias")):
            yield weight(f"{pre}.{norm}.layer_norm.{hf_name}", (d,), (half, "norm", ours), (d,))
    for name in PROJECTIONS[HF_KIND[kind]]:
        yield weight(
            f"{pre}.attention.self_attention.{name}.weight",
            (h * k, d),
            ("attention", "attention", name, "kernel"),
            (d, h, k),
            transposed=True,
        )
    yield weight(
        f"{pre}.attention.output.dense.weight",
        (d, h * k),
        ("attention", "attention", "out", "kernel"),
        (h, k, d),
        transposed=True,
    )
    ff, ours = f"{pre}.feed_forward", ("feed_forward", "ff")
    yield weight(f"{ff}.dense.dense.weight", (f, d), ours + ("wi_kernel",), (d, f), True)
    yield weight(f"{ff}.dense.dense.bias", (f,), ours + ("wi_bias",), (f,))
    yield weight(f"{ff}.output.dense.weight", (d, f), ours + ("wo_kernel",), (f, d), True)
    yield weight(f"{ff}.output.dense.bias", (d,), ours + ("wo_bias",), (d,))


def _position_weights(m) -> Iterator[Weight]:
    """Two axial tables (HF broadcasts each over the other axis), or one learned table;
    none for `positional = "none"`."""
    if m.positional == "axial":
        (a, b), (d1, d2) = m.axial_shape, m.axial_dims
        pos = "embeddings.position_embeddings.weights"
        yield Weight(f"{pos}.0", (a, 1, d1), ("axial_pos", "axial_0"), None, (a, d1))
        yield Weight(f"{pos}.1", (1, b, d2), ("axial_pos", "axial_1"), None, (b, d2))
    elif m.positional == "learned":
        shape = (m.max_len, m.d_model)
        name = "embeddings.position_embeddings.embedding.weight"
        yield Weight(name, shape, ("pos_embed",), None, shape)


def weights(m) -> list[Weight]:
    """Every weight of the model of `m` (`config.model` or a `ModelConfig`) with a language
    model head, HF's order aside: the token table, the positions, each layer, the final
    LayerNorm over the two joined streams and the output layer."""
    d2, v = 2 * m.d_model, m.vocab_size
    table = (v, m.d_model)
    out = [Weight("embeddings.word_embeddings.weight", table, ("embed", "embedding"), None, table)]
    out += _position_weights(m)
    for i in range(m.n_layers):
        out += _layer_weights(m, i)
    out += [
        Weight("encoder.layer_norm.weight", (d2,), ("final_norm", "scale"), None, (d2,)),
        Weight("encoder.layer_norm.bias", (d2,), ("final_norm", "bias"), None, (d2,)),
        Weight("lm_head.decoder.weight", (v, d2), ("logits", "kernel"), None, (d2, v), True),
        # Older HF files hold the output bias as `lm_head.bias` alone (tied); newer ones both.
        Weight("lm_head.decoder.bias", (v,), ("logits", "bias"), None, (v,), aliases=OLD_BIAS),
    ]
    return out


def assemble(m, read: Callable[[Weight], np.ndarray]) -> dict:
    """This model's parameter tree from `read(weight)` (the weight in this model's layout)
    of every weight of `weights(m)`; layer groups stacked over their repeats in order."""
    tree: dict = {}
    stacks: dict[tuple[str, ...], list] = {}
    for w in weights(m):
        if w.layer is None:
            _set(tree, w.path, read(w))
        else:
            stacks.setdefault(w.path, []).append((w.layer, read(w)))
    for path, parts in stacks.items():
        _set(tree, path, np.stack([a for _, a in sorted(parts, key=lambda x: x[0])]))
    return tree


def leaf(params: Mapping, w: Weight) -> np.ndarray:
    """The array of `w` in the parameter tree `params` (a layer's slice of its group)."""
    node = params
    for key in w.path:
        node = node[key]
    a = np.asarray(node, np.float32)
    return a if w.layer is None else a[w.layer]


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value
