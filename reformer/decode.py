"""Cached autoregressive decoding and sampling for `ReformerLM`.

Position `t` of the model reads token `t - 1` (0 at `t = 0`) and its logits predict token
`t`. A decode keeps, per layer, what later positions read from earlier ones, in buffers of a
fixed size:

- `full` layers: keys and values of every position so far (`[B, H, T, K]`);
- `full_shared_qk` and `lsh` layers: unit-length shared keys and values, and for `lsh` the
  buckets of every position in every hash round (`[B, H, N, T]`, hashed once, when the
  position is written);
- `local` layers: a ring of the last `(n_chunks_before + 1) * chunk_len` keys and values with
  their positions, so a step costs the same at any context length.

`prefill` runs the prompt as one batched forward pass and fills the caches; `decode_step`
adds one position. Full and local layers compute exactly what the training-time forward pass
computes for that position. LSH layers follow the one-query semantics of
`docs/architecture.md` ("Decoding"): a position attends to every earlier position that shares
its bucket in at least one hash round (each key once), and to itself only when nothing else
is visible, with rotations drawn once per decode from its key.

The two streams of a layer are computed forward (`Y1 = X1 + F(X2)`, `Y2 = X2 + G(Y1)`),
whether the model was trained reversibly or not: nothing is differentiated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from reformer import attention, lsh
from reformer.blocks import layer_params
from reformer.layers import layer_norm
from reformer.model import FeedForwardHalf, ModelConfig, OutputLayer, ReformerLM, shift_right
from reformer.reversible import on_grid

_QUERY_BLOCK = 256  # prompt positions attended at once in the prefill of full and LSH layers
END_TOKEN = 1  # byte vocabulary: 0 = padding, 1 = end


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How the next token is drawn from the logits.

    `temperature=0` is greedy (argmax). Otherwise the logits are divided by the
    temperature, then `top_k > 0` keeps the k largest and `top_p < 1` the smallest set of
    largest-probability tokens whose probability sums to at least `top_p` (after top-k);
    ties with the last kept token are kept.
    """

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self):
        problems = []
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            problems.append(f"temperature must be a number >= 0, got {self.temperature}")
        if not (
            isinstance(self.top_k, numbers.Integral)
            and not isinstance(self.top_k, bool)
            and self.top_k >= 0
        ):
            problems.append(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            problems.append(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")
        if problems:
            raise ValueError("; ".join(problems))


def max_positions(cfg: ModelConfig) -> int | None:
    """How many positions the model's positional embedding covers (None: no limit)."""
    if cfg.positional == "learned":
        return cfg.max_len
    if cfg.positional == "axial":
        return math.prod(cfg.axial_shape)
    return None


def lsh_n_buckets(cfg: ModelConfig) -> int:
    """Buckets per round when decoding: `model.n_buckets`, else trax's automatic count at
    `model.max_len`. Callers that know the training length resolve the automatic count at it
    first (`with_training_length`), as `reformer.sample` and cached evaluation do."""
    return cfg.lsh_n_buckets or lsh.default_n_buckets(cfg.max_len, cfg.lsh_chunk_len)


def with_training_length(cfg: ModelConfig, seq_len: int) -> ModelConfig:
    """`cfg` with an automatic bucket count (`n_buckets = 0`) fixed to the one training used
    at sequences of `seq_len` tokens, so decoding hashes into as many buckets as training."""
    if cfg.lsh_n_buckets or "lsh" not in cfg.attention_types:
        return cfg
    return dataclasses.replace(cfg, n_buckets=lsh.default_n_buckets(seq_len, cfg.lsh_chunk_len))


def lsh_rotations(cfg: ModelConfig, hash_key: jax.Array, layer: int, n_hashes: int) -> jax.Array:
    """Random rotations `[H, K, n_hashes, R]` of layer `layer` for one decode (R as in
    training, `lsh.rotation_width`)."""
    width = lsh.rotation_width(lsh_n_buckets(cfg), cfg.bucket_factors)
    shape = (cfg.n_heads, cfg.d_head, n_hashes, width)
    return jax.random.normal(jax.random.fold_in(hash_key, layer), shape)


def hash_keys(
    qk_BxHxMxK: jax.Array, rotations_HxKxNxR: jax.Array, factors: tuple[int, ...] = ()
) -> jax.Array:
    """Buckets `[B, H, N, M]`: `argmax(concat([x R, -x R]))` per round (per factor), as in
    training."""
    rotated = jnp.einsum(
        "bhmk,hknr->bhnmr", qk_BxHxMxK.astype(jnp.float32), rotations_HxKxNxR.astype(jnp.float32)
    )
    return lsh.buckets_from_rotated(rotated, factors)


def local_window(cfg: ModelConfig) -> int:
    """Positions a local layer's ring holds: the query's chunk and the chunk before it."""
    return (attention.LocalSelfAttention.n_chunks_before + 1) * cfg.local_chunk_len


def _layer_kinds(cfg: ModelConfig) -> list[str]:
    return [cfg.attention_type(i) for i in range(cfg.n_layers)]


def init_cache(cfg: ModelConfig, batch: int, length: int, n_hashes: int) -> list[dict]:
    """Empty caches of every layer for `length` positions."""
    dtype = cfg.jnp_dtype
    caches = []
    for kind in _layer_kinds(cfg):
        size = local_window(cfg) if kind == "local" else length
        kv = jnp.zeros((batch, cfg.n_heads, size, cfg.d_head), dtype)
        cache = {"k": kv, "v": kv}
        if kind == "lsh":
            cache["buckets"] = jnp.zeros((batch, cfg.n_heads, n_hashes, size), jnp.int32)
        if kind == "local":
            cache["pos"] = jnp.full((size,), -1, jnp.int32)  # -1 = empty slot
        caches.append(cache)
    return caches


def _attend(q_BxHxQxK, q_pos_Q, k_BxHxTxK, v_BxHxTxK, k_pos_T, bias_BxHxQxT, exclude_self):
    """Causal attention of Q queries over T cached keys, with the training masks."""
    logits = jnp.einsum("bhqk,bhtk->bhqt", q_BxHxQxK, k_BxHxTxK, preferred_element_type=jnp.float32)
    q_pos, k_pos = q_pos_Q[:, None], k_pos_T[None, :]
    bias = jnp.where(k_pos > q_pos, lsh.MASK_VALUE, 0.0)
    if exclude_self:
        bias = bias + jnp.where(k_pos == q_pos, lsh.SELF_MASK_VALUE, 0.0)
    if bias_BxHxQxT is not None:
        bias = bias + bias_BxHxQxT
    probs = jax.nn.softmax(logits + bias, axis=-1)
    out = jnp.einsum(
        "bhqt,bhtk->bhqk",
        probs.astype(v_BxHxTxK.dtype),
        v_BxHxTxK,
        preferred_element_type=jnp.float32,
    )
    return out.astype(v_BxHxTxK.dtype)


def _bucket_bias(q_buckets_BxHxNxQ, k_buckets_BxHxNxT):
    """-1e9 where query and key share no bucket in any round."""
    shared = q_buckets_BxHxNxQ[:, :, 0, :, None] == k_buckets_BxHxNxT[:, :, 0, None, :]
    for r in range(1, q_buckets_BxHxNxQ.shape[2]):
        shared |= q_buckets_BxHxNxQ[:, :, r, :, None] == k_buckets_BxHxNxT[:, :, r, None, :]
    return jnp.where(shared, 0.0, lsh.MASK_VALUE)


def _attend_cache(q_BxHxMxK, start, cache, exclude_self, q_buckets_BxHxNxM=None):
    """Queries at positions `start + [0, M)` over a whole (full or LSH) cache, `_QUERY_BLOCK`
    queries at a time so a long prompt never builds `[M, T]` logits at once."""
    m, t = q_BxHxMxK.shape[2], cache["k"].shape[2]
    k_pos_T = jnp.arange(t)

    def block(q, q_pos, q_buckets):
        bias = None if q_buckets is None else _bucket_bias(q_buckets, cache["buckets"])
        return _attend(q, q_pos, cache["k"], cache["v"], k_pos_T, bias, exclude_self)

    q_pos_M = start + jnp.arange(m)
    if m <= _QUERY_BLOCK:
        return block(q_BxHxMxK, q_pos_M, q_buckets_BxHxNxM)
    n_blocks = -(-m // _QUERY_BLOCK)
    pad = n_blocks * _QUERY_BLOCK - m

    def split(x, axis):  # [..., M, ...] -> [n_blocks, ..., block, ...]
        x = jnp.pad(x, [(0, 0)] * axis + [(0, pad)] + [(0, 0)] * (x.ndim - axis - 1))
        x = x.reshape(x.shape[:axis] + (n_blocks, _QUERY_BLOCK) + x.shape[axis + 1 :])
        return jnp.moveaxis(x, axis, 0)

    blocks = (
        split(q_BxHxMxK, 2),
        split(q_pos_M, 0),
        None if q_buckets_BxHxNxM is None else split(q_buckets_BxHxNxM, 3),
    )
    out = jax.lax.map(lambda a: block(*a), blocks)  # [n_blocks, B, H, block, K]
    out = jnp.moveaxis(out, 0, 2).reshape(out.shape[1], out.shape[2], -1, out.shape[-1])
    return out[:, :, :m]


def _write(cache_array, new, start, axis):
    return jax.lax.dynamic_update_slice_in_dim(
        cache_array, new.astype(cache_array.dtype), start, axis
    )


def _local_step(cfg, q_BxHx1xK, k_BxHx1xK, v_BxHx1xK, pos, cache):
    """One position of a local layer: write it into the ring, attend over the window."""
    window = cache["k"].shape[2]
    slot = pos % window
    cache = {
        "k": _write(cache["k"], k_BxHx1xK, slot, 2),
        "v": _write(cache["v"], v_BxHx1xK, slot, 2),
        "pos": cache["pos"].at[slot].set(pos),
    }
    c = cfg.local_chunk_len
    first = (pos // c - attention.LocalSelfAttention.n_chunks_before) * c
    k_pos = cache["pos"]
    outside = (k_pos < 0) | (k_pos < first)
    bias = jnp.where(outside, lsh.MASK_VALUE, 0.0)[None, None, None, :]
    out = _attend(q_BxHx1xK, pos[None], cache["k"], cache["v"], k_pos, bias, False)
    return out, cache


def _local_prefill(cfg, q_BxHxMxK, k_BxHxMxK, v_BxHxMxK, cache):
    """Positions `[0, M)` of a local layer with the training kernel; then the ring holds the
    last positions."""

    def one_head(q, k, v):
        return lsh.local_attention(q, k, v, chunk_len=cfg.local_chunk_len, causal=cfg.causal)

    out = jax.vmap(jax.vmap(one_head))(q_BxHxMxK, k_BxHxMxK, v_BxHxMxK)
    m, window = q_BxHxMxK.shape[2], cache["k"].shape[2]
    keep = jnp.arange(max(0, m - window), m)
    slots = keep % window
    cache = {
        "k": cache["k"].at[:, :, slots].set(k_BxHxMxK[:, :, keep].astype(cache["k"].dtype)),
        "v": cache["v"].at[:, :, slots].set(v_BxHxMxK[:, :, keep].astype(cache["v"].dtype)),
        "pos": cache["pos"].at[slots].set(keep),
    }
    return out, cache


def _attention_half(cfg, kind, p, x_BxMxD, start, cache, rotations):
    """F of a layer on positions `start + [0, M)`: LayerNorm, attention over the cache, the
    output projection; returns (out, cache with these positions written)."""
    dtype = cfg.jnp_dtype
    h = layer_norm(p["norm"], x_BxMxD, cfg.layer_norm_eps)
    p = p["attention"]

    def project(name):
        return jnp.swapaxes(attention.project_heads(h, p[name]["kernel"], dtype), 1, 2)

    m = x_BxMxD.shape[1]
    v = project("value")
    if kind in ("full", "local"):
        q, k = project("query"), project("key")
        if kind == "local" and m > 1:  # The training kernel scales q itself.
            out, cache = _local_prefill(cfg, q, k, v, cache)
        elif kind == "local":
            q = q * jnp.asarray(cfg.d_head**-0.5, q.dtype)
            out, cache = _local_step(cfg, q, k, v, start, cache)
        else:
            q = q * jnp.asarray(cfg.d_head**-0.5, q.dtype)
            cache = {"k": _write(cache["k"], k, start, 2), "v": _write(cache["v"], v, start, 2)}
            out = _attend_cache(q, start, cache, exclude_self=False)
    elif kind in ("full_shared_qk", "lsh"):
        qk = project("query_key")
        cache = {
            **cache,
            "k": _write(cache["k"], lsh.unit_keys(qk), start, 2),
            "v": _write(cache["v"], v, start, 2),
        }
        q_buckets = None
        if kind == "lsh":
            q_buckets = hash_keys(qk, rotations, cfg.bucket_factors)
            cache["buckets"] = _write(cache["buckets"], q_buckets, start, 3)
        out = _attend_cache(qk, start, cache, exclude_self=True, q_buckets_BxHxNxM=q_buckets)
    else:
        raise ValueError(f"decoding does not support attention type {kind!r}")
    y = attention.project_out(jnp.swapaxes(out, 1, 2), p["out"]["kernel"], dtype)
    return y, cache


def _embed(cfg: ModelConfig, params, inputs_BxM, start):
    """Token plus position embeddings of positions `start + [0, M)`: the float32 residual
    streams, as in the model (only the branches compute in `model.dtype`)."""
    dtype = jnp.float32
    x = params["embed"]["embedding"][inputs_BxM].astype(dtype)
    pos = start + jnp.arange(inputs_BxM.shape[1])
    if cfg.positional == "learned":
        x = x + params["pos_embed"][pos].astype(dtype)
    elif cfg.positional == "axial":
        b = cfg.axial_shape[1]
        table = params["axial_pos"]
        pos_MxD = jnp.concatenate([table["axial_0"][pos // b], table["axial_1"][pos % b]], -1)
        x = x + pos_MxD.astype(dtype)
    return x


def forward(cfg: ModelConfig, params, inputs_BxM, start, caches, rotations):
    """Logits `[B, M, V]` of positions `start + [0, M)` that read `inputs_BxM` (already
    shifted: the token before each position), and the caches with these positions added.

    `M > 1` is a prefill and must start at 0; `M == 1` is one step at any `start`."""
    start = jnp.asarray(start, jnp.int32)
    grid = functools.partial(on_grid, spacing=cfg.stream_spacing)  # as in the model's stack
    x1 = grid(_embed(cfg, params, inputs_BxM, start))
    x2 = None if cfg.n_streams == 1 else x1  # `standard`: one stream, x + F(x), x + G(x)
    ff = FeedForwardHalf(cfg)
    new_caches = []
    for i, kind in enumerate(_layer_kinds(cfg)):
        layer = layer_params(params["layers"], cfg, i)
        f_out, cache = _attention_half(
            cfg, kind, layer["attention"], x1 if x2 is None else x2, start, caches[i], rotations[i]
        )
        x1 = x1 + grid(f_out.astype(x1.dtype))
        g_out = grid(ff.apply({"params": layer["feed_forward"]}, x1, deterministic=True))
        x1, x2 = (x1 + g_out, None) if x2 is None else (x1, x2 + g_out)
        new_caches.append(cache)
    y = x1 if x2 is None else jnp.concatenate([x1, x2], axis=-1)
    y = layer_norm(params["final_norm"], y, cfg.layer_norm_eps)
    logits = OutputLayer(cfg.vocab_size, cfg.jnp_dtype).apply({"params": params["logits"]}, y)
    return logits, new_caches


def all_rotations(cfg: ModelConfig, hash_key: jax.Array, n_hashes: int) -> list:
    """Each layer's LSH rotations for one decode (None for other layers)."""
    return [
        lsh_rotations(cfg, hash_key, i, n_hashes) if kind == "lsh" else None
        for i, kind in enumerate(_layer_kinds(cfg))
    ]


def sample_logits(logits_BxV: jax.Array, keys_B: jax.Array, sampling: Sampling) -> jax.Array:
    """One token per row, row `b` drawn with `keys_B[b]` (rows are independent)."""
    if sampling.temperature == 0:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    logits = logits_BxV.astype(jnp.float32)
    logits = (logits - jnp.max(logits, axis=-1, keepdims=True)) / sampling.temperature
    if sampling.top_k and sampling.top_k < logits.shape[-1]:
        kth = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    if sampling.top_p < 1.0:
        sorted_desc = -jnp.sort(-logits, axis=-1)
        probs = jax.nn.softmax(sorted_desc, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # probability of the larger tokens
        kept = jnp.where(before < sampling.top_p, sorted_desc, jnp.inf)
        threshold = jnp.min(kept, axis=-1, keepdims=True)
        logits = jnp.where(logits < threshold, -jnp.inf, logits)
    return jax.vmap(jax.random.categorical)(keys_B, logits).astype(jnp.int32)


def _row_keys(rng: jax.Array, batch: int, step) -> jax.Array:
    """Row b's key at `step`: independent of the batch size and of the other rows."""
    return jax.vmap(lambda b: jax.random.fold_in(jax.random.fold_in(rng, b), step))(
        jnp.arange(batch)
    )


def check_lengths(cfg: ModelConfig, prompt_len: int, length: int) -> None:
    """ValueError unless a prompt of `prompt_len` tokens and `length` new ones fit."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    limit = max_positions(cfg)
    where = f"model.{'max_len' if cfg.positional == 'learned' else 'axial_shape'}"
    if limit is not None and prompt_len >= limit:
        raise ValueError(
            f"the prompt has {prompt_len} tokens; the model has {limit} positions ({where}), "
            f"so a prompt can have at most {limit - 1}"
        )
    if limit is not None and prompt_len + length > limit:
        raise ValueError(
            f"a prompt of {prompt_len} tokens plus {length} new ones needs "
            f"{prompt_len + length} positions; the model has {limit} ({where}). "
            f"Use a shorter prompt or length <= {max(0, limit - prompt_len)}."
        )


def check_prompt(cfg: ModelConfig, prompt_BxN) -> jax.Array:
    """The prompt as int32 `[B, N]`; ValueError for a non-causal model, another shape or
    token ids outside the vocabulary."""
    if not cfg.causal_attention:
        raise ValueError(
            "decoding needs a causal model (model.kind='lm', model.causal=True); "
            f"this one is model.kind={cfg.kind!r}, model.causal={cfg.causal}"
        )
    ids = np.asarray(prompt_BxN)
    if ids.ndim != 2:
        raise ValueError(f"prompt must be token ids [batch, length], got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"prompt must be integer token ids, got dtype {ids.dtype}")
    if ids.size and (ids.min() < 0 or ids.max() >= cfg.vocab_size):
        bad = int(ids.min()) if ids.min() < 0 else int(ids.max())
        raise ValueError(
            f"prompt token ids must be in 0..{cfg.vocab_size - 1} "
            f"(model.vocab_size={cfg.vocab_size}), got {bad}"
        )
    return jnp.asarray(ids, jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "total", "n_hashes"))
def prefill(cfg: ModelConfig, params, prompt_BxN, hash_key, *, total: int, n_hashes: int):
    """One forward pass over the prompt: `(logits [B, V] of position N, caches for `total`
    positions holding positions 0..N, each layer's LSH rotations)`."""
    batch, _ = prompt_BxN.shape
    rotations = all_rotations(cfg, hash_key, n_hashes)
    caches = init_cache(cfg, batch, total, n_hashes)
    inputs = jnp.pad(prompt_BxN, ((0, 0), (1, 0)))  # positions 0..N read 0, p_0, ..., p_{N-1}
    logits, caches = forward(cfg, params, inputs, 0, caches, rotations)
    return logits[:, -1], caches, rotations


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "length", "sampling", "end_token", "with_logits"),
)
def sample_loop(
    cfg: ModelConfig,
    params,
    logits_BxV,
    caches,
    rotations,
    start,
    rng,
    *,
    length: int,
    sampling: Sampling,
    end_token: int | None,
    with_logits: bool = False,
):
    """Draws `length` tokens: the first from `logits_BxV` (of position `start`), each next
    one after a cached step that feeds the token before it. Returns `(tokens [B, length],
    logits [B, length, V] or an empty array)`."""
    batch = logits_BxV.shape[0]
    token = sample_logits(logits_BxV, _row_keys(rng, batch, 0), sampling)
    tokens = jnp.zeros((batch, length), jnp.int32).at[:, 0].set(token)
    all_logits = jnp.zeros((batch, length, cfg.vocab_size) if with_logits else (0,), jnp.float32)
    if with_logits:
        all_logits = all_logits.at[:, 0].set(logits_BxV)
    done = token == end_token if end_token is not None else jnp.zeros((batch,), bool)

    def cond(carry):
        i, _, _, _, done, _ = carry
        return (i < length) & ~jnp.all(done)

    def body(carry):
        i, token, caches, tokens, done, all_logits = carry
        logits, caches = forward(cfg, params, token[:, None], start + i, caches, rotations)
        logits_BxV = logits[:, 0]
        new = sample_logits(logits_BxV, _row_keys(rng, batch, i), sampling)
        new = jnp.where(done, 0, new)
        if with_logits:
            all_logits = all_logits.at[:, i].set(jnp.where(done[:, None], 0.0, logits_BxV))
        if end_token is not None:
            done = done | (new == end_token)
        return i + 1, new, caches, tokens.at[:, i].set(new), done, all_logits

    carry = (jnp.int32(1), token, caches, tokens, done, all_logits)
    _, _, _, tokens, _, all_logits = jax.lax.while_loop(cond, body, carry)
    return tokens, all_logits


def generate(
    cfg: ModelConfig,
    params,
    prompt_BxN,
    length: int,
    rng: jax.Array,
    sampling: Sampling = Sampling(),
    *,
    end_token: int | None = END_TOKEN,
    n_hashes: int | None = None,
    return_logits: bool = False,
):
    """`length` new tokens `[B, length]` after each row's prompt (token ids `[B, N]`, N may
    be 0), decoded with caches in one jitted loop.

    A row stops at `end_token` (it is kept; later entries are 0) and the loop stops when all
    rows have. `rng` draws the samples and the LSH rotations; `n_hashes` overrides the
    model's hash rounds. With `return_logits` also the logits `[B, length, V]` each token was
    drawn from (zeros after a row ended).
    """
    prompt_BxN = check_prompt(cfg, prompt_BxN)
    check_lengths(cfg, prompt_BxN.shape[1], length)
    sample_rng, hash_key = jax.random.split(rng)
    n = prompt_BxN.shape[1]
    logits_BxV, caches, rotations = prefill(
        cfg, params, prompt_BxN, hash_key, total=n + length, n_hashes=n_hashes or cfg.n_hashes
    )
    tokens, logits = sample_loop(
        cfg,
        params,
        logits_BxV,
        caches,
        rotations,
        jnp.int32(n),
        sample_rng,
        length=length,
        sampling=sampling,
        end_token=end_token,
        with_logits=return_logits,
    )
    return (tokens, logits) if return_logits else tokens


@functools.partial(jax.jit, static_argnames=("cfg", "n_hashes", "prefix"))
def cached_logits(cfg: ModelConfig, params, tokens_BxL, hash_key, *, n_hashes: int, prefix: int):
    """Teacher-forced logits `[B, L, V]` of `tokens_BxL` through the cache: positions
    `[0, prefix)` in one prefill, then one `decode_step` per position. `prefix = L` is one
    pass; both give the same logits (the tests check it)."""
    batch, length = tokens_BxL.shape
    rotations = all_rotations(cfg, hash_key, n_hashes)
    caches = init_cache(cfg, batch, length, n_hashes)
    inputs = shift_right(tokens_BxL)
    logits, caches = forward(cfg, params, inputs[:, :prefix], 0, caches, rotations)
    if prefix == length:
        return logits

    def step(caches, t_and_token):
        t, token_B = t_and_token
        out, caches = forward(cfg, params, token_B[:, None], t, caches, rotations)
        return caches, out[:, 0]

    xs = (jnp.arange(prefix, length), jnp.moveaxis(inputs[:, prefix:], 1, 0))
    _, rest = jax.lax.scan(step, caches, xs)
    return jnp.concatenate([logits, jnp.moveaxis(rest, 0, 1)], axis=1)


@functools.partial(jax.jit, static_argnames=("cfg", "length", "sampling", "end_token", "n_hashes"))
def _generate_uncached(cfg, params, prompt_BxN, rng, *, length, sampling, end_token, n_hashes):
    batch, n = prompt_BxN.shape
    sample_rng, hash_key = jax.random.split(rng)
    total = n + length
    model = ReformerLM(cfg)
    buffer = jnp.zeros((batch, total), jnp.int32).at[:, :n].set(prompt_BxN)
    positions = jnp.arange(total)

    def cond(carry):
        i, _, done = carry
        return (i < length) & ~jnp.all(done)

    def body(carry):
        i, buffer, done = carry
        t = n + i
        mask = jnp.broadcast_to(positions <= t, buffer.shape)
        logits = model.apply(
            {"params": params}, buffer, mask, n_hashes=n_hashes, rngs={"hash": hash_key}
        )
        logits_BxV = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)
        new = sample_logits(logits_BxV, _row_keys(sample_rng, batch, i), sampling)
        new = jnp.where(done, 0, new)
        if end_token is not None:
            done = done | (new == end_token)
        return i + 1, buffer.at[:, t].set(new), done

    carry = (jnp.int32(0), buffer, jnp.zeros((batch,), bool))
    _, buffer, _ = jax.lax.while_loop(cond, body, carry)
    return buffer[:, n:]


def generate_uncached(
    cfg: ModelConfig,
    params,
    prompt_BxN,
    length: int,
    rng: jax.Array,
    sampling: Sampling = Sampling(),
    *,
    end_token: int | None = END_TOKEN,
    n_hashes: int | None = None,
):
    """`generate` without a cache: every new token re-runs the whole model (the training
    forward pass) on a buffer of `N + length` positions, those not yet generated masked as
    padding. The reference for full and local layers, and the baseline of
    `scripts/bench_decode.py`."""
    prompt_BxN = check_prompt(cfg, prompt_BxN)
    check_lengths(cfg, prompt_BxN.shape[1], length)
    return _generate_uncached(
        cfg,
        params,
        prompt_BxN,
        rng,
        length=length,
        sampling=sampling,
        end_token=end_token,
        n_hashes=n_hashes or cfg.n_hashes,
    )
