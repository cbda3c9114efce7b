"""Beam search for the language model and the encoder-decoder, over the same cached
decoding as `reformer/decoding/sampling.py` (its prefill and cached steps): the authors' length
penalty, finished beams kept while they rank among the best, `beam_size=1` = greedy."""

from __future__ import annotations

import functools
import math
import numbers

import jax
import jax.numpy as jnp

from reformer.decoding.layers import forward
from reformer.decoding.sampling import prefill, prepare
from reformer.model.model_config import ModelConfig
from reformer.tokens import END_ID

LENGTH_PENALTY = 0.6  # alpha of the authors' beam search: score / ((5 + len) / 6) ** alpha


def length_penalty(length, alpha: float):
    """The authors' length normalization: a sequence's log-probability is divided by
    `((5 + length) / 6) ** alpha`."""
    return ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=("cfg", "length", "beam_size", "alpha", "end_token"))
def _beam_loop(cfg, params, logits_BKxV, caches, start, *, length, beam_size, alpha, end_token):
    batch = logits_BKxV.shape[0] // beam_size
    vocab = logits_BKxV.shape[-1]
    # Beams of a row start identical: only the first may grow at the first step.
    first = jnp.where(jnp.arange(beam_size) == 0, 0.0, -jnp.inf)
    state = dict(
        tokens=jnp.zeros((batch, beam_size, length), jnp.int32),
        logp=jnp.broadcast_to(first, (batch, beam_size)),
        lengths=jnp.zeros((batch, beam_size), jnp.int32),
        done=jnp.zeros((batch, beam_size), bool),
        logits=logits_BKxV,
        caches=caches,
    )

    def score(logp, lengths):
        return logp / length_penalty(lengths.astype(jnp.float32), alpha)

    def expand(s, i):
        """Every beam's continuations scored, the best `beam_size` kept. A finished beam
        continues only with padding (0), at no cost: it keeps its place while it scores."""
        logp_BxKxV = jax.nn.log_softmax(s["logits"].astype(jnp.float32)).reshape(
            batch, beam_size, vocab
        )
        frozen = jnp.where(jnp.arange(vocab) == 0, 0.0, -jnp.inf)
        logp_BxKxV = jnp.where(s["done"][..., None], frozen, logp_BxKxV)
        total = s["logp"][..., None] + logp_BxKxV
        grown = s["lengths"] + (~s["done"]).astype(jnp.int32)
        lengths = jnp.broadcast_to(grown[..., None], total.shape)
        ranked = score(total, lengths).reshape(batch, -1)
        _, best = jax.lax.top_k(ranked, beam_size)  # [B, K] over (beam, token)
        parent, token = best // vocab, (best % vocab).astype(jnp.int32)
        take = lambda a: jnp.take_along_axis(a, parent, axis=1)  # noqa: E731
        flat = lambda a: a.reshape(batch, -1)  # noqa: E731
        done = take(s["done"])
        ended = done | (token == end_token) if end_token is not None else done
        tokens = jnp.take_along_axis(s["tokens"], parent[..., None], axis=1).at[:, :, i].set(token)
        rows = (jnp.arange(batch)[:, None] * beam_size + parent).reshape(-1)
        return dict(
            tokens=tokens,
            logp=jnp.take_along_axis(flat(total), best, axis=1),
            lengths=jnp.take_along_axis(flat(lengths), best, axis=1),
            done=ended,
            caches=reorder_caches(s["caches"], rows),
        )

    def cond(carry):
        i, s = carry
        return (i < length) & ~jnp.all(s["done"])

    def body(carry):
        i, s = carry
        s = {**s, **expand(s, i)}
        # Token i sits at position start + i; the next step's logits are position i + 1's.
        logits, s["caches"] = forward(
            cfg, params, s["tokens"][:, :, i].reshape(-1, 1), start + i + 1, s["caches"]
        )
        s["logits"] = logits[:, 0]
        return i + 1, s

    _, s = jax.lax.while_loop(cond, body, (jnp.int32(0), state))
    final = score(s["logp"], s["lengths"])
    best = jnp.argmax(final, axis=1)
    pick = lambda a: jnp.take_along_axis(a, best[:, None, None], axis=1)[:, 0]  # noqa: E731
    return pick(s["tokens"]), jnp.take_along_axis(final, best[:, None], axis=1)[:, 0]


def reorder_caches(caches: list[dict], rows_B: jax.Array) -> list[dict]:
    """The self-attention caches with row `b` taken from row `rows_B[b]` (the beams' new
    order). Cross-attention caches are the same for every beam of a source row, positions
    of local rings the same for every row, and rotations shared: left as they are."""
    reordered = []
    for cache in caches:
        attention = {
            name: jnp.take(a, rows_B, axis=0) if name in ("k", "v", "buckets") else a
            for name, a in cache["attention"].items()
        }
        reordered.append({**cache, "attention": attention})
    return reordered


def beam_search(
    cfg: ModelConfig,
    params,
    prompt_BxN,
    length: int,
    rng: jax.Array,
    *,
    beam_size: int = 4,
    alpha: float = LENGTH_PENALTY,
    end_token: int | None = END_ID,
    n_hashes: int | None = None,
    source_BxS=None,
):
    """The best of `beam_size` beams per row: `(tokens [B, length], scores [B])`, a score
    being the sequence's log-probability divided by `length_penalty(its length, alpha)`
    (the authors' setting: alpha 0.6), its length counting the end token.

    At each step every beam's continuations are ranked by that score and the best
    `beam_size` kept; a beam that emitted `end_token` is finished: it stays as it is
    (continued with padding at no cost) while it ranks among the best. With `beam_size=1`
    this is greedy decoding. The loop stops after `length` tokens or when every beam of
    every row has finished. `rng` draws the LSH rotations (nothing is sampled); an
    encoder-decoder's source is encoded once for all beams.
    """
    if not (isinstance(beam_size, numbers.Integral) and beam_size >= 1):
        raise ValueError(f"beam_size must be an integer >= 1, got {beam_size}")
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha (length penalty) must be a number >= 0, got {alpha}")
    prompt_BxN, source_BxS = prepare(cfg, prompt_BxN, length, source_BxS)
    n = prompt_BxN.shape[1]
    logits, caches = prefill(
        cfg,
        params,
        prompt_BxN,
        jax.random.split(rng)[1],
        source_BxS,
        total=n + length,
        n_hashes=n_hashes or cfg.n_hashes,
        copies=beam_size,
    )
    return _beam_loop(
        cfg,
        params,
        logits,
        caches,
        jnp.int32(n),
        length=length,
        beam_size=beam_size,
        alpha=float(alpha),
        end_token=end_token,
    )
