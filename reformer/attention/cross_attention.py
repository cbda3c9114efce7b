"""Cross-attention: the decoder's queries attending to the encoder output, full or LSH.

The module has the call conventions of the self-attention modules of
`self_attention.py` (projections without bias, `normalize` / `finish` around them, a
decoding `cache`) and shares their helpers; the math is in `lsh.cross_attention`,
`lsh.lsh_cross_attention` and, for decoding, `reformer/attention/caches.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from reformer.attention import caches, lsh
from reformer.attention.self_attention import (
    _dropout_rngs,
    _hash_rng,
    _in_kernels,
    _out_kernel,
    _per_head,
    _project,
    _project_chunk,
    _to_heads_first,
    _unproject,
    _unproject_chunk,
    project_heads,
    random_rotations,
)


class CrossAttention(nn.Module):
    """The decoder's queries attending to the encoder output (`memory`, `[B, S, M]`).

    `kind="full"`: scaled dot product over every source position ("query" from the decoder,
    "key" and "value" from the memory; the authors' setting). `kind="lsh"`: the decoder's
    queries ("query_key") and the memory's keys ("key") hashed in one shared-QK space and
    attended in sorted chunks (`lsh.lsh_cross_attention`), so long sources and targets cost
    O((T + S) * chunk_len); returns the buckets `[B, H, n_hashes, T + S]` for the reversible
    backward pass. Any source and target lengths; `memory_mask_BxS` is True for real
    source tokens. A query that sees no real source key gets a zero output.
    """

    n_heads: int
    d_head: int
    kind: str = "full"
    chunk_len: int = 64
    n_buckets: int | None = None
    bucket_factors: tuple[int, ...] | None = None
    n_hashes: int = 1
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    position_chunk: int = 0

    @nn.compact
    def __call__(
        self,
        x_BxTxD: jax.Array,
        memory_BxSxM: jax.Array,
        memory_mask_BxS: jax.Array | None = None,
        *,
        deterministic: bool = True,
        n_hashes: int | None = None,
        buckets: jax.Array | None = None,
        normalize: Callable | None = None,
        finish: Callable | None = None,
        cache: dict | None = None,
    ) -> tuple[jax.Array, jax.Array | None]:
        """Returns `(y, buckets or None)`; with a `cache` (decoding), `(y, cache)`: given
        `memory`, the cache of this source is computed first (`caches.cross_attention_cache`,
        its LSH rotations from the given cache) and `x_BxTxD` may be None (y None)."""
        if self.kind not in ("full", "lsh"):
            raise ValueError(f"cross-attention kind must be 'full' or 'lsh', got {self.kind!r}")
        if cache is not None:
            return _cross_cached(self, x_BxTxD, memory_BxSxM, memory_mask_BxS, cache, normalize)
        batch, length, d_model = x_BxTxD.shape
        lsh_kind = self.kind == "lsh"
        (q_BxHxTxK,) = _project(self, x_BxTxD, ("query_key" if lsh_kind else "query",), normalize)
        kernels = _in_kernels(self, memory_BxSxM.shape[-1], ("key", "value"))
        k_BxHxSxK, v_BxHxSxK = (
            _to_heads_first(project_heads(memory_BxSxM, kernels[n], self.dtype))
            for n in ("key", "value")
        )
        rate, rngs_BxH = _dropout_rngs(self, self.dropout_rate, deterministic, batch, self.n_heads)
        if not lsh_kind:

            def one_head(q, k, v, mask_S, rng):
                return lsh.cross_attention(q, k, v, mask=mask_S, dropout_rate=rate, dropout_rng=rng)

            arrays = (q_BxHxTxK, k_BxHxSxK, v_BxHxSxK)
            out = _per_head(one_head, arrays, memory_mask_BxS, rngs_BxH)
            return _unproject(self, out, d_model, finish), None
        n_items = length + memory_BxSxM.shape[1]
        n_buckets = self.n_buckets or lsh.default_n_buckets(n_items, self.chunk_len)
        rotations_HxKxNxR = None
        if buckets is None:
            width = lsh.rotation_width(n_buckets, self.bucket_factors)
            shape = (self.n_heads, self.d_head, n_hashes or self.n_hashes, width)
            rotations_HxKxNxR = random_rotations(_hash_rng(self, deterministic), shape)

        def one_head(q, k, v, buckets_NxI, mask_S, rng, rotations):
            return lsh.lsh_cross_attention(
                q,
                k,
                v,
                rotations,
                chunk_len=self.chunk_len,
                mask=mask_S,
                dropout_rate=rate,
                dropout_rng=rng,
                buckets=buckets_NxI,
                bucket_factors=self.bucket_factors,
                n_buckets=n_buckets,
            )

        out, buckets_BxHxNxI = _per_head(
            one_head,
            (q_BxHxTxK, k_BxHxSxK, v_BxHxSxK, buckets),
            memory_mask_BxS,
            rngs_BxH,
            (rotations_HxKxNxR,),
        )
        return _unproject(self, out, d_model, finish), buckets_BxHxNxI


def _cross_cached(module, x_BxTxD, memory_BxSxM, memory_mask_BxS, cache, normalize):
    """`CrossAttention`'s decoding path (see its `__call__`)."""
    factors = module.bucket_factors or ()
    if memory_BxSxM is not None:
        kernels = _in_kernels(module, memory_BxSxM.shape[-1], ("key", "value"))
        k_BxHxSxK, v_BxHxSxK = (
            _to_heads_first(project_heads(memory_BxSxM, kernels[n], module.dtype))
            for n in ("key", "value")
        )
        cache = caches.cross_attention_cache(
            module.kind,
            k_BxHxSxK,
            v_BxHxSxK,
            memory_mask_BxS,
            rotations=cache.get("rotations"),
            bucket_factors=factors,
        )
    if x_BxTxD is None:
        return None, cache
    d_model = x_BxTxD.shape[-1]
    name = "query_key" if module.kind == "lsh" else "query"
    kernels = _in_kernels(module, d_model, (name,))
    out_kernel = _out_kernel(module, d_model)
    (q_BxHxTxK,) = _project_chunk(module, kernels, normalize, x_BxTxD)
    out = caches.cross_attention_step(
        module.kind,
        q_BxHxTxK,
        cache,
        d_head=module.d_head,
        chunk_len=module.chunk_len,
        bucket_factors=factors,
    )
    return _unproject_chunk(module, out_kernel, None, 0, out), cache
