"""Cached autoregressive sampling for the language model and the encoder-decoder: the
checks of a prompt and a source, the sampling rule, the prefill and the jitted sampling
loop, teacher-forced logits through the caches, and the uncached reference loop (beam
search: `beam.py`).

Position `t` of a decoder reads token `t - 1` (0 at `t = 0`) and its logits predict token
`t`. A prompt of `N` tokens is one forward pass over positions `0..N` (the prefill); then
each new token is one step that runs every layer on one position (`layers.forward`, through
the model's own modules; the caches and their rotations are set up in `cache.py`). An
encoder-decoder encodes its source once, before the prefill, and every cross-attention
layer caches the source's keys and values (`layers.start_caches`).

Full and local layers compute exactly what the training forward pass computes for a
position. LSH layers follow the one-query semantics of `docs/architecture.md` ("Decoding"),
with rotations drawn once per decode from its key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from reformer.decoding.layers import forward, start_caches
from reformer.model.model_config import ModelConfig
from reformer.model.models import ReformerLM
from reformer.tokens import END_ID


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


def check_source(cfg: ModelConfig, source_BxS, batch: int) -> jax.Array | None:
    """The source of an encoder-decoder as int32 `[B, S]` (None for other models);
    ValueError for a missing source, another shape, more tokens than the model's positions or
    ids outside the vocabulary."""
    if cfg.kind != "encoder_decoder":
        if source_BxS is not None:
            raise ValueError(f"a source is for encoder-decoders; this is a {cfg.kind!r} model")
        return None
    if source_BxS is None:
        raise ValueError("an encoder-decoder decodes from a source: give source ids [B, S]")
    ids = np.asarray(source_BxS)
    if ids.ndim != 2 or ids.shape[0] != batch or ids.shape[1] == 0:
        raise ValueError(f"source must be token ids [{batch}, S > 0], got shape {ids.shape}")
    limit = max_positions(cfg)
    if limit is not None and ids.shape[1] > limit:
        raise ValueError(
            f"the source has {ids.shape[1]} tokens; the encoder has {limit} positions "
            f"(model.{'max_len' if cfg.positional == 'learned' else 'axial_shape'})"
        )
    if not np.issubdtype(ids.dtype, np.integer) or ids.min() < 0 or ids.max() >= cfg.vocab_size:
        raise ValueError(
            f"source token ids must be integers in 0..{cfg.vocab_size - 1} "
            f"(model.vocab_size={cfg.vocab_size})"
        )
    return jnp.asarray(ids, jnp.int32)


@functools.partial(jax.jit, static_argnames=("cfg", "total", "n_hashes", "copies"))
def prefill(
    cfg: ModelConfig,
    params,
    prompt_BxN,
    hash_key,
    source_BxS=None,
    *,
    total: int,
    n_hashes: int,
    copies: int = 1,
):
    """One forward pass over the prompt: `(logits [B * copies, V] of position N, caches for
    `total` positions holding positions 0..N)`; each row repeated `copies` times (beams)."""
    prompt = jnp.repeat(prompt_BxN, copies, axis=0)
    caches = start_caches(cfg, params, prompt.shape[0], total, n_hashes, hash_key, source_BxS)
    inputs = jnp.pad(prompt, ((0, 0), (1, 0)))  # positions 0..N read 0, p_0, ..., p_{N-1}
    logits, caches = forward(cfg, params, inputs, 0, caches)
    return logits[:, -1], caches


@functools.partial(
    jax.jit,
    static_argnames=("cfg", "length", "sampling", "end_token", "with_logits"),
)
def sample_loop(
    cfg: ModelConfig,
    params,
    logits_BxV,
    caches,
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
        logits, caches = forward(cfg, params, token[:, None], start + i, caches)
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


def prepare(cfg, prompt_BxN, length, source_BxS):
    """The checked prompt and source of a decode."""
    prompt_BxN = check_prompt(cfg, prompt_BxN)
    check_lengths(cfg, prompt_BxN.shape[1], length)
    return prompt_BxN, check_source(cfg, source_BxS, prompt_BxN.shape[0])


def generate(
    cfg: ModelConfig,
    params,
    prompt_BxN,
    length: int,
    rng: jax.Array,
    sampling: Sampling = Sampling(),
    *,
    end_token: int | None = END_ID,
    n_hashes: int | None = None,
    return_logits: bool = False,
    source_BxS=None,
):
    """`length` new tokens `[B, length]` after each row's prompt (token ids `[B, N]`, N may
    be 0), decoded with caches in one jitted loop; an encoder-decoder's from its
    `source_BxS` (token ids `[B, S]`, padding 0), encoded once.

    A row stops at `end_token` (it is kept; later entries are 0) and the loop stops when all
    rows have. `rng` draws the samples and the LSH rotations; `n_hashes` overrides the
    model's hash rounds. With `return_logits` also the logits `[B, length, V]` each token was
    drawn from (zeros after a row ended).
    """
    prompt_BxN, source_BxS = prepare(cfg, prompt_BxN, length, source_BxS)
    sample_rng, hash_key = jax.random.split(rng)
    n = prompt_BxN.shape[1]
    logits_BxV, caches = prefill(
        cfg,
        params,
        prompt_BxN,
        hash_key,
        source_BxS,
        total=n + length,
        n_hashes=n_hashes or cfg.n_hashes,
    )
    tokens, logits = sample_loop(
        cfg,
        params,
        logits_BxV,
        caches,
        jnp.int32(n),
        sample_rng,
        length=length,
        sampling=sampling,
        end_token=end_token,
        with_logits=return_logits,
    )
    return (tokens, logits) if return_logits else tokens


@functools.partial(jax.jit, static_argnames=("cfg", "n_hashes", "prefix"))
def cached_logits(
    cfg: ModelConfig, params, tokens_BxL, hash_key, source_BxS=None, *, n_hashes: int, prefix: int
):
    """Teacher-forced logits `[B, L, V]` of `tokens_BxL` through the cache: positions
    `[0, prefix)` in one prefill, then one cached step per position (an encoder-decoder's
    target given its source). `prefix = L` is one pass; both give the same logits (the tests
    check it)."""
    batch, length = tokens_BxL.shape
    caches = start_caches(cfg, params, batch, length, n_hashes, hash_key, source_BxS)
    inputs = jnp.pad(tokens_BxL, ((0, 0), (1, 0)))[:, :-1]
    logits, caches = forward(cfg, params, inputs[:, :prefix], 0, caches)
    if prefix == length:
        return logits

    def step(caches, t_and_token):
        t, token_B = t_and_token
        out, caches = forward(cfg, params, token_B[:, None], t, caches)
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
    end_token: int | None = END_ID,
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
