"""The attention types a layer can have (`model.attention_types`): each name's builder of
its self-attention module from the model's config. A new type is one `register` call: its
name becomes an allowed value of the config and layers of that type are built with it."""

from __future__ import annotations

from collections.abc import Callable

from flax import linen as nn

from reformer.attention import self_attention as attention
from reformer.config.schema import ATTENTION_TYPES
from reformer.model.model_config import ModelConfig

# name -> builder(cfg, common, chunks) -> module. `common`: the keyword arguments every
# self-attention module takes (heads, causality, dropout, dtype, position chunks, name);
# `chunks`: the chunk neighbours of chunked types (n_chunks_before / after).
Builder = Callable[[ModelConfig, dict, dict], nn.Module]
BUILDERS: dict[str, Builder] = {}


def register(name: str, builder: Builder) -> None:
    """Adds attention type `name` (built by `builder`) to the model and to the config's
    allowed values. The module has the call signature of the self-attention modules
    (`reformer/attention/self_attention.py`)."""
    BUILDERS[name] = builder
    if name not in ATTENTION_TYPES:
        ATTENTION_TYPES.append(name)


def unregister(name: str) -> None:
    """Removes an added type (the built-in ones stay)."""
    if name in _BUILT_IN:
        raise ValueError(f"{name!r} is a built-in attention type")
    BUILDERS.pop(name, None)
    if name in ATTENTION_TYPES:
        ATTENTION_TYPES.remove(name)


def make_attention(cfg: ModelConfig, kind: str, name: str) -> nn.Module:
    """The self-attention module of one layer, by type. Bidirectional chunked layers see
    one chunk before and one after (the authors' encoder); causal ones one chunk before."""
    common = dict(
        n_heads=cfg.n_heads,
        d_head=cfg.d_head,
        causal=cfg.causal_attention,
        dropout_rate=cfg.attention_dropout,
        dtype=cfg.jnp_dtype,
        position_chunk=cfg.position_chunk_size,
        name=name,
    )
    chunks = dict(n_chunks_before=1, n_chunks_after=0 if cfg.causal_attention else 1)
    if kind not in BUILDERS:
        raise ValueError(f"unknown attention type {kind!r}; known: {tuple(BUILDERS)}")
    return BUILDERS[kind](cfg, common, chunks)


def _full(cfg, common, chunks):
    return attention.FullSelfAttention(**common)


def _full_shared_qk(cfg, common, chunks):
    return attention.FullSelfAttention(shared_qk=True, **common)


def _lsh(cfg, common, chunks):
    return attention.LSHSelfAttention(
        chunk_len=cfg.lsh_chunk_len,
        n_buckets=cfg.lsh_n_buckets or None,
        bucket_factors=cfg.bucket_factors or None,
        n_hashes=cfg.n_hashes,
        heads_per_step=cfg.lsh_heads_per_step,
        **chunks,
        **common,
    )


def _local(cfg, common, chunks):
    # Causal local attention wraps around the sequence's start (masked by causality);
    # bidirectional local attention sees no chunk across the sequence's ends.
    return attention.LocalSelfAttention(
        chunk_len=cfg.local_chunk_len, wrap=common["causal"], **chunks, **common
    )


_BUILT_IN = {"full": _full, "full_shared_qk": _full_shared_qk, "lsh": _lsh, "local": _local}
for _name, _builder in _BUILT_IN.items():
    register(_name, _builder)
