"""Whether LSH lets the duplication task's queries find their twins (`0 w 0 w`).

The LM's position p reads token p - 1 and predicts token p. In the second copy
(p = |w| + 2 .. 2|w| + 1, the scored positions) token p repeats token p - (|w| + 1) of the
first copy, its twin, which position p - |w| reads: the key a one-layer model must attend to.
For every such query and head, `twin_stats` asks whether some hash round lets the query see
that key (`patterns.Pattern.visible`) and what weight the query gives it, next to the model's
accuracy on the same sequences with the same rotations.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from reformer.inspection.capture import capture_layer
from reformer.inspection.patterns import expand, head_plan
from reformer.model.attention_types import make_attention
from reformer.model.model_config import ModelConfig
from reformer.model.models import make_model


def second_copy(word_len: int) -> np.ndarray:
    """The query positions of the second copy (the scored ones)."""
    return np.arange(word_len + 2, 2 * word_len + 2)


@functools.partial(jax.jit, static_argnames=("cfg", "layer", "word_len"))
def _twins(cfg: ModelConfig, layer: int, word_len: int, qk_MxLxK, mask_MxL, buckets_MxNxL):
    """`(seen [M, Q], weight [M, Q])` for M (example, head) pairs: whether the twin key of
    each second-copy query is visible in some round, and its combined weight."""
    kind = cfg.attention_type(layer)
    module = make_attention(cfg, kind, "attention")
    q_pos_Q = jnp.asarray(second_copy(word_len))
    twin_Q = q_pos_Q - word_len
    length = qk_MxLxK.shape[1]

    def one(args):
        qk_LxK, mask_L, buckets_NxL = args
        plan = head_plan(module, kind, mask_L, buckets_NxL, length)
        pattern = expand(plan, qk_LxK, None, q_pos_Q)
        hit = pattern.keys_QxNxE == twin_Q[:, None, None]
        seen = jnp.any(hit & pattern.visible_QxNxE, axis=(1, 2))
        return seen, jnp.sum(jnp.where(hit, pattern.weights_QxNxE, 0.0), axis=(1, 2))

    return lax.map(one, (qk_MxLxK, mask_MxL, buckets_MxNxL))


@functools.partial(jax.jit, static_argnames=("cfg", "n_hashes"))
def _correct(cfg: ModelConfig, params, tokens_BxL, hash_key, n_hashes):
    """Whether the model's forward pass (with these rotations) predicts each token."""
    logits = make_model(cfg).apply(
        {"params": params}, tokens_BxL, n_hashes=n_hashes, rngs={"hash": hash_key}
    )
    return jnp.argmax(logits, axis=-1) == tokens_BxL


def twin_stats(
    cfg: ModelConfig,
    params,
    tokens_BxL: np.ndarray,
    word_len: int,
    n_hashes: int,
    hash_key: jax.Array,
    layer: int = 0,
) -> dict[str, np.ndarray]:
    """For sequences `0 w 0 w` (`[B, L]`, one draw of rotations from `hash_key`) and LSH
    layer `layer`: `seen` `[B, H, Q]` (the twin is visible to the second-copy query in some
    round), `weight` `[B, H, Q]` (the weight the query gives it) and `correct` `[B, Q]` (the
    model predicts the token)."""
    capture = capture_layer(cfg, params, tokens_BxL, layer, hash_key, n_hashes)
    if capture.kind != "lsh":
        raise ValueError(f"layer {layer} is {capture.kind!r}, not an LSH layer")
    batch, n_heads = capture.buckets.shape[:2]

    def flat(a):  # [B, H, ...] -> [B * H, ...]
        return None if a is None else a.reshape((batch * n_heads,) + a.shape[2:])

    mask = None if capture.mask is None else jnp.repeat(capture.mask[:, None], n_heads, axis=1)
    seen, weight = _twins(
        cfg,
        layer,
        word_len,
        flat(capture.projections["query_key"]),
        flat(mask),
        flat(capture.buckets),
    )
    correct = _correct(cfg, params, jnp.asarray(tokens_BxL), hash_key, n_hashes)
    q_pos = second_copy(word_len)
    return {
        "seen": np.asarray(seen).reshape(batch, n_heads, -1),
        "weight": np.asarray(weight).reshape(batch, n_heads, -1),
        "correct": np.asarray(correct)[:, q_pos],
    }


def twin_summary(stats: list[dict[str, np.ndarray]]) -> dict:
    """The shares over all sequences and second-copy queries of `twin_stats` results: the
    twin seen by each head, by some head, and the accuracy; the mean weight on the twin of
    the head that gives it most."""
    seen = np.concatenate([s["seen"] for s in stats])  # [B, H, Q]
    weight = np.concatenate([s["weight"] for s in stats])
    correct = np.concatenate([s["correct"] for s in stats])
    return {
        "sequences": int(seen.shape[0]),
        "queries": int(seen.shape[0] * seen.shape[2]),
        "twin_seen_any_head": float(seen.any(axis=1).mean()),
        "twin_seen_per_head": [float(x) for x in seen.mean(axis=(0, 2))],
        "twin_weight_best_head": float(weight.max(axis=1).mean()),
        "accuracy": float(correct.mean()),
    }
