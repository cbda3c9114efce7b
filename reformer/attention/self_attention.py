"""Self-attention modules.

Every module here has the same call signature, so a model can cycle attention types over
its layers:

    y_BxLxD, aux = module(x_BxLxD, mask_BxL=None, deterministic=True, n_hashes=None,
                          buckets=None, normalize=None, finish=None)

`mask_BxL` is True for real tokens, False for padding. `aux` is whatever the backward pass of
a reversible stack must reuse: the LSH buckets `[B, n_heads, n_hashes, L]`, or None. The
keyword arguments `n_hashes` (apply-time override) and `buckets` (reuse instead of hashing)
only matter to `LSHSelfAttention`; the other modules accept and ignore them. `normalize`
(a position-wise function of the input, the half's LayerNorm) runs before the projections
and `finish(chunk_index, y)` (position-wise and linear, the half's dropout) after the output
projection; with `position_chunk > 0` both run with the projections on that many positions
at a time, rematerialized in the backward pass (`layers.sequence_map`), and causal local
attention runs whole span by span.

The modules own the projections (no bias, as trax) and the random numbers; the math lives in
the pure one-head functions of `reformer/attention/lsh.py`, which the modules `vmap` over batch and
heads. Random streams: "dropout" for attention dropout, "hash" for the LSH rotations.
Whole-sequence calls sow their heads' projections and kernel outputs into the
`intermediates` collection (`_expose`), which `reformer/inspection/` makes mutable.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from reformer.attention import caches, lsh
from reformer.attention.primitives import matmul, sequence_map


def project_heads(x_BxLxD: jax.Array, kernel_DxHxK: jax.Array, dtype: Any) -> jax.Array:
    """d_model -> [n_heads, d_head], without bias (`layers.matmul`: operands in `dtype`,
    float32 accumulation); the result in `dtype`, as the attention kernels' products read it."""
    return matmul(x_BxLxD, kernel_DxHxK, dtype).astype(dtype)


def project_out(x_BxLxHxK: jax.Array, kernel_HxKxD: jax.Array, dtype: Any) -> jax.Array:
    """[n_heads, d_head] -> d_model, without bias; the result in float32."""
    return matmul(x_BxLxHxK, kernel_HxKxD, dtype, n_contract=2)


def _dropout_rngs(
    module: nn.Module, rate: float, deterministic: bool, batch: int, n_heads: int
) -> tuple[float, jax.Array | None]:
    """(effective rate, one key per example and head); no rng is drawn when off."""
    if deterministic or rate == 0.0:
        return 0.0, None
    return rate, jax.random.split(module.make_rng("dropout"), (batch, n_heads))


def _fold_in_each(keys_BxH: jax.Array, data: jax.Array) -> jax.Array:
    """Each example's and head's key folded with `data` (e.g. a chunk index)."""
    return jax.vmap(jax.vmap(lambda key: jax.random.fold_in(key, data)))(keys_BxH)


def _per_head(
    fn: Callable[..., Any],
    arrays_BxHx: tuple[jax.Array | None, ...],
    mask_BxL: jax.Array | None,
    rngs_BxH: jax.Array | None,
    shared_Hx: tuple[jax.Array | None, ...] = (),
) -> Any:
    """Maps `fn(*arrays, mask, rng, *shared)` over batch and heads.

    `arrays_BxHx` have leading [B, H] axes, `mask_BxL` is per example, `rngs_BxH` per example
    and head, `shared_Hx` per head and shared by the examples. None entries pass through.
    Batch and heads are flattened into one mapped axis: XLA:CPU runs the kernel's row
    gathers (one index per row instead of three) and so the whole LSH kernel markedly faster
    than under two nested `vmap`s.
    """
    batch, n_heads = next(a for a in arrays_BxHx if a is not None).shape[:2]

    def flat(a, per_head_only=False):
        if a is None:
            return None
        if per_head_only:
            a = jnp.broadcast_to(a[None], (batch,) + a.shape)
        return a.reshape((batch * n_heads,) + a.shape[2:])

    mask_MxL = None if mask_BxL is None else jnp.repeat(mask_BxL, n_heads, axis=0)
    out = jax.vmap(fn)(
        *(flat(a) for a in arrays_BxHx),
        mask_MxL,
        flat(rngs_BxH),
        *(flat(a, per_head_only=True) for a in shared_Hx),
    )
    return jax.tree.map(lambda a: a.reshape((batch, n_heads) + a.shape[1:]), out)


def _to_heads_first(x_BxLxHxK: jax.Array) -> jax.Array:
    return jnp.swapaxes(x_BxLxHxK, 1, 2)


# Where a call exposes its heads' projections and kernel outputs (`reformer/inspection/`).
INTERMEDIATES = "intermediates"


def _expose(module: nn.Module, projections: dict, out_BxHxLxK: jax.Array) -> None:
    """Sows the heads' projections (`[B, H, L, K]` by kernel name) and the kernel's output
    `[B, H, L, K]` into `INTERMEDIATES`: a no-op unless a caller makes that collection
    mutable, so training computes exactly what it did without it."""
    module.sow(INTERMEDIATES, "projections", projections)
    module.sow(INTERMEDIATES, "heads_out", out_BxHxLxK)


class _Kernel(nn.Module):
    """A projection kernel under `<name>/kernel`, initialized as `nn.DenseGeneral` does
    (LeCun normal over the `n_in` leading axes flattened as fan-in)."""

    shape: tuple[int, ...]
    n_in: int

    @nn.compact
    def __call__(self) -> jax.Array:
        def init(key, shape, dtype=jnp.float32):
            flat = (math.prod(shape[: self.n_in]), math.prod(shape[self.n_in :]))
            return nn.initializers.lecun_normal()(key, flat, dtype).reshape(shape)

        return self.param("kernel", init, self.shape)


def _in_kernels(module: nn.Module, d_model: int, names: tuple[str, ...]) -> dict:
    """Declares the head projections `names` (`[d_model, H, K]` each) and returns them."""
    shape = (d_model, module.n_heads, module.d_head)
    return {n: _Kernel(shape, 1, name=n)() for n in names}


def _out_kernel(module: nn.Module, d_model: int) -> jax.Array:
    """Declares the output projection `[H, K, d_model]` and returns it."""
    return _Kernel((module.n_heads, module.d_head, d_model), 2, name="out")()


def _project_chunk(module, kernels: dict, normalize: Callable | None, x_BxCxD: jax.Array):
    """`normalize(x)` projected to each kernel's heads: `[B, H, C, K]` in `dtype` each (H is
    the kernels' head count: all of the module's heads or a group of them)."""
    h = x_BxCxD if normalize is None else normalize(x_BxCxD)
    n_heads, d_head = next(iter(kernels.values())).shape[1:]
    return tuple(_to_heads_first(project_heads(h, k, module.dtype)) for k in kernels.values())


def _unproject_chunk(module, kernel, finish: Callable | None, index, out_BxHxCxK: jax.Array):
    """The heads' output projection, `[B, C, d_model]` float32, then `finish(index, y)`."""
    y = project_out(_to_heads_first(out_BxHxCxK), kernel, module.dtype)
    return y if finish is None else finish(index, y)


def _project(
    module: nn.Module, x_BxLxD: jax.Array, names: tuple[str, ...], normalize: Callable | None
) -> tuple[jax.Array, ...]:
    """The head projections `names` of `normalize(x)`, each `[B, H, L, K]` in `dtype`, computed
    on `module.position_chunk` positions at a time (`layers.sequence_map`)."""
    kernels = _in_kernels(module, x_BxLxD.shape[-1], names)
    return sequence_map(
        lambda _, x: _project_chunk(module, kernels, normalize, x),
        (x_BxLxD,),
        module.position_chunk,
        out_axis=2,
    )


def _unproject(
    module: nn.Module, out_BxHxLxK: jax.Array, d_model: int, finish: Callable | None
) -> jax.Array:
    """The output projection of the heads, `[B, L, d_model]` float32, then
    `finish(chunk_index, y)`, on `module.position_chunk` positions at a time."""
    kernel = _out_kernel(module, d_model)
    return sequence_map(
        lambda index, out: _unproject_chunk(module, kernel, finish, index, out),
        (out_BxHxLxK,),
        module.position_chunk,
        in_axis=2,
    )


def _cached(module, kind, names, x_BxMxD, cache, start, normalize, **options):
    """A self-attention module's decoding path: the positions `start + [0, M)` projected
    with the module's own kernels, attended over `cache` (`caches.self_attention_step`) and
    projected out; returns `(y [B, M, d_model] float32, the updated cache)`."""
    d_model = x_BxMxD.shape[-1]
    kernels = _in_kernels(module, d_model, names)
    out_kernel = _out_kernel(module, d_model)
    projections = dict(zip(names, _project_chunk(module, kernels, normalize, x_BxMxD), strict=True))
    out_BxHxMxK, cache = caches.self_attention_step(
        kind, projections, cache, start, d_head=module.d_head, **options
    )
    return _unproject_chunk(module, out_kernel, None, 0, out_BxHxMxK), cache


class FullSelfAttention(nn.Module):
    """Multi-head attention over the whole sequence (O(L^2) memory).

    Standard scaled dot-product attention with "query", "key", "value", "out" projections;
    or, with `shared_qk=True`, exactly the LSH logits and masks over all keys ("query_key",
    "value", "out", the parameter names of `LSHSelfAttention`): this evaluates an LSH-trained
    model "with full attention" (paper, Table 2).
    """

    n_heads: int
    d_head: int
    causal: bool = True
    shared_qk: bool = False
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    position_chunk: int = 0

    @nn.compact
    def __call__(
        self,
        x_BxLxD: jax.Array,
        mask_BxL: jax.Array | None = None,
        *,
        deterministic: bool = True,
        n_hashes: int | None = None,
        buckets: jax.Array | None = None,
        normalize: Callable | None = None,
        finish: Callable | None = None,
        cache: dict | None = None,
        start: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        del n_hashes, buckets  # LSH-only arguments
        batch = x_BxLxD.shape[0]
        if cache is not None:
            kind, names = (
                ("full_shared_qk", ("query_key", "value"))
                if self.shared_qk
                else ("full", ("query", "key", "value"))
            )
            return _cached(self, kind, names, x_BxLxD, cache, start, normalize)
        if self.shared_qk:
            q_BxHxLxK, v_BxHxLxK = _project(self, x_BxLxD, ("query_key", "value"), normalize)
            k_BxHxLxK = None
        else:
            q_BxHxLxK, k_BxHxLxK, v_BxHxLxK = _project(
                self, x_BxLxD, ("query", "key", "value"), normalize
            )
        rate, rngs_BxH = _dropout_rngs(self, self.dropout_rate, deterministic, batch, self.n_heads)

        def one_head(q_LxK, k_LxK, v_LxK, mask_L, rng):
            return lsh.full_attention(
                q_LxK,
                k_LxK,
                v_LxK,
                causal=self.causal,
                mask=mask_L,
                dropout_rate=rate,
                dropout_rng=rng,
            )

        out_BxHxLxK = _per_head(one_head, (q_BxHxLxK, k_BxHxLxK, v_BxHxLxK), mask_BxL, rngs_BxH)
        names = ("query_key", "value") if self.shared_qk else ("query", "key", "value")
        heads = (q_BxHxLxK, v_BxHxLxK) if self.shared_qk else (q_BxHxLxK, k_BxHxLxK, v_BxHxLxK)
        _expose(self, dict(zip(names, heads, strict=True)), out_BxHxLxK)
        return _unproject(self, out_BxHxLxK, x_BxLxD.shape[-1], finish), None


class LocalSelfAttention(nn.Module):
    """Chunked local attention: each chunk of `chunk_len` attends to itself and to
    `n_chunks_before` previous (and `n_chunks_after` next) chunks; O(L * chunk_len) memory."""

    n_heads: int
    d_head: int
    chunk_len: int
    n_chunks_before: int = 1
    n_chunks_after: int = 0
    causal: bool = True
    wrap: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    position_chunk: int = 0

    @nn.compact
    def __call__(
        self,
        x_BxLxD: jax.Array,
        mask_BxL: jax.Array | None = None,
        *,
        deterministic: bool = True,
        n_hashes: int | None = None,
        buckets: jax.Array | None = None,
        normalize: Callable | None = None,
        finish: Callable | None = None,
        cache: dict | None = None,
        start: jax.Array | None = None,
    ) -> tuple[jax.Array, Any]:
        del n_hashes, buckets  # LSH-only arguments
        if cache is not None:
            names = ("query", "key", "value")
            return _cached(
                self,
                "local",
                names,
                x_BxLxD,
                cache,
                start,
                normalize,
                local_chunk_len=self.chunk_len,
                n_chunks_before=self.n_chunks_before,
            )
        rate, rngs_BxH = _dropout_rngs(
            self, self.dropout_rate, deterministic, x_BxLxD.shape[0], self.n_heads
        )
        length, span = x_BxLxD.shape[1], self.position_chunk
        back = self.n_chunks_before * self.chunk_len
        if self.causal and self.n_chunks_after == 0 and 0 < span < length:
            # Spans of whole chunks, each with a look-back no longer than itself.
            if span % self.chunk_len == 0 and back <= span:
                return self._in_spans(x_BxLxD, mask_BxL, rate, rngs_BxH, normalize, finish), None
        qkv_BxHxLxK = _project(self, x_BxLxD, ("query", "key", "value"), normalize)
        out_BxHxLxK = self._attend(qkv_BxHxLxK, mask_BxL, rate, rngs_BxH)
        _expose(self, dict(zip(("query", "key", "value"), qkv_BxHxLxK, strict=True)), out_BxHxLxK)
        return _unproject(self, out_BxHxLxK, x_BxLxD.shape[-1], finish), None

    def _attend(self, qkv_BxHxLxK, mask_BxL, rate, rngs_BxH):
        """The local attention kernel on every example and head: `[B, H, L, K]` out."""

        def one_head(q_LxK, k_LxK, v_LxK, mask_L, rng):
            return lsh.local_attention(
                q_LxK,
                k_LxK,
                v_LxK,
                chunk_len=self.chunk_len,
                n_chunks_before=self.n_chunks_before,
                n_chunks_after=self.n_chunks_after,
                causal=self.causal,
                mask=mask_L,
                dropout_rate=rate,
                dropout_rng=rng,
                wrap=self.wrap,
            )

        return _per_head(one_head, tuple(qkv_BxHxLxK), mask_BxL, rngs_BxH)

    def _in_spans(self, x_BxLxD, mask_BxL, rate, rngs_BxH, normalize, finish):
        """The whole half, projections to output, on `position_chunk` positions at a time.

        Causal local attention needs only the `n_chunks_before` chunks before a span, so
        each span is computed from its positions and that look-back (`sequence_map` with
        `look_back`), rematerialized in the backward pass: nothing of sequence length is kept
        but the input. The same function as the whole-sequence path: the look-back of the
        first span, where the whole-sequence kernel wraps around to the last chunks, is masked
        (there causal masking hides those keys). Attention dropout draws per span.
        """
        d_model, back = x_BxLxD.shape[-1], self.n_chunks_before * self.chunk_len
        kernels = _in_kernels(self, d_model, ("query", "key", "value"))
        out_kernel = _out_kernel(self, d_model)

        def span(index, x_BxSxD, *mask):
            qkv_BxHxSxK = _project_chunk(self, kernels, normalize, x_BxSxD)
            seen_S = (jnp.arange(x_BxSxD.shape[1]) >= back) | (index > 0)
            mask_BxS = seen_S[None, :] & (mask[0] if mask else True)
            mask_BxS = jnp.broadcast_to(mask_BxS, x_BxSxD.shape[:2])
            rngs = None if rngs_BxH is None else _fold_in_each(rngs_BxH, index)
            out_BxHxSxK = self._attend(qkv_BxHxSxK, mask_BxS, rate, rngs)
            return _unproject_chunk(self, out_kernel, finish, index, out_BxHxSxK[:, :, back:])

        arrays = (x_BxLxD,) if mask_BxL is None else (x_BxLxD, mask_BxL)
        return sequence_map(span, arrays, self.position_chunk, look_back=back)


def _hash_rng(module: nn.Module, deterministic: bool) -> jax.Array:
    """The key of a call's LSH rotations: the "hash" stream; without one, a deterministic
    call uses a fixed key derived from the module's path (evaluation without rngs is
    repeatable) and a training call raises (it must hash with fresh rotations)."""
    if module.has_rng("hash"):
        return module.make_rng("hash")
    if not deterministic:
        raise ValueError(
            f"{type(module).__name__} needs a 'hash' rng when deterministic=False "
            "(pass rngs={'hash': key, ...} to apply)"
        )
    return jax.random.fold_in(jax.random.key(0), zlib.crc32("/".join(module.path).encode()))


def random_rotations(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """The LSH rotations `[heads, d_head, n_hashes, R]` of one call (R = n_buckets / 2, or
    sum(bucket_factors) / 2, `lsh.rotation_width`): standard
    normal, as trax and HF draw them. One function, so a test can put HF's in their place."""
    return jax.random.normal(key, shape)


class LSHSelfAttention(nn.Module):
    """Reformer LSH self-attention (shared QK, multi-round hashing, sorted chunks).

    `n_buckets=None` picks trax's automatic count, two buckets per chunk of the (padded)
    length. Rotations are drawn per call and per head (shared by the examples of a batch) from
    the "hash" rng stream; without one, deterministic calls use a fixed key derived from the
    module's path (evaluation without rngs is repeatable) and non-deterministic calls raise,
    since training must hash with fresh rotations. `n_hashes` can be raised at apply time (the
    paper evaluates 2-hash models with 8); `buckets` from an earlier call are reused as given.
    """

    n_heads: int
    d_head: int
    chunk_len: int
    n_buckets: int | None = None
    bucket_factors: tuple[int, ...] | None = None
    n_hashes: int = 1
    n_chunks_before: int = 1
    n_chunks_after: int = 0
    causal: bool = True
    attend_across_buckets: bool = True
    allow_duplicate_attention: bool = True
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    position_chunk: int = 0
    heads_per_step: int = 0

    def _hash_rng(self, deterministic: bool) -> jax.Array:
        return _hash_rng(self, deterministic)

    @nn.compact
    def __call__(
        self,
        x_BxLxD: jax.Array,
        mask_BxL: jax.Array | None = None,
        *,
        deterministic: bool = True,
        n_hashes: int | None = None,
        buckets: jax.Array | None = None,
        normalize: Callable | None = None,
        finish: Callable | None = None,
        cache: dict | None = None,
        start: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array]:
        if cache is not None:
            return _cached(
                self,
                "lsh",
                ("query_key", "value"),
                x_BxLxD,
                cache,
                start,
                normalize,
                bucket_factors=self.bucket_factors or (),
            )
        batch, length, d_model = x_BxLxD.shape
        rotations_HxKxNxR = None
        n_buckets = self.n_buckets or lsh.default_n_buckets(length, self.chunk_len)
        if buckets is None:
            if n_buckets % 2:
                raise ValueError(f"n_buckets must be even, got {n_buckets}")
            if self.bucket_factors and math.prod(self.bucket_factors) != n_buckets:
                raise ValueError(
                    f"bucket_factors {self.bucket_factors} must multiply to n_buckets={n_buckets}"
                )
            width = lsh.rotation_width(n_buckets, self.bucket_factors)
            shape = (self.n_heads, self.d_head, n_hashes or self.n_hashes, width)
            rotations_HxKxNxR = random_rotations(self._hash_rng(deterministic), shape)
        rate, rngs_BxH = _dropout_rngs(self, self.dropout_rate, deterministic, batch, self.n_heads)

        def one_head(qk_LxK, v_LxK, buckets_NxL, mask_L, rng, rotations_KxNxR):
            return lsh.lsh_attention(
                qk_LxK,
                v_LxK,
                rotations_KxNxR,
                chunk_len=self.chunk_len,
                n_chunks_before=self.n_chunks_before,
                n_chunks_after=self.n_chunks_after,
                causal=self.causal,
                mask=mask_L,
                attend_across_buckets=self.attend_across_buckets,
                allow_duplicate_attention=self.allow_duplicate_attention,
                dropout_rate=rate,
                dropout_rng=rng,
                buckets=buckets_NxL,
                bucket_factors=self.bucket_factors,
                n_buckets=n_buckets,
            )

        per_head = (buckets, rngs_BxH, rotations_HxKxNxR)
        if 0 < self.heads_per_step < self.n_heads:
            return self._in_head_groups(one_head, x_BxLxD, mask_BxL, per_head, normalize, finish)
        qk_BxHxLxK, v_BxHxLxK = _project(self, x_BxLxD, ("query_key", "value"), normalize)
        out_BxHxLxK, buckets_BxHxNxL = _per_head(
            one_head, (qk_BxHxLxK, v_BxHxLxK, buckets), mask_BxL, rngs_BxH, (rotations_HxKxNxR,)
        )
        _expose(self, {"query_key": qk_BxHxLxK, "value": v_BxHxLxK}, out_BxHxLxK)
        return _unproject(self, out_BxHxLxK, d_model, finish), buckets_BxHxNxL

    def _in_head_groups(self, one_head, x_BxLxD, mask_BxL, per_head, normalize, finish):
        """The whole half for `heads_per_step` heads at a time, their contributions summed.

        A group projects the (normalized) input to its heads' queries-keys and values, hashes
        and attends, and projects its output back to `[B, L, d_model]`; each group is
        rematerialized in the backward pass, so nothing of all heads at sequence length
        (projections, kernel outputs, their gradients) exists at once: only the input, the
        sum, and one group's arrays. Costs one more forward pass of the projections and the
        kernel per LSH layer in the backward pass. `finish` (dropout) is applied to the sum.
        """
        if self.n_heads % self.heads_per_step:
            raise ValueError(
                f"heads_per_step={self.heads_per_step} must divide n_heads={self.n_heads}"
            )
        size, (batch, length, d_model) = self.heads_per_step, x_BxLxD.shape
        kernels = _in_kernels(self, d_model, ("query_key", "value"))
        out_kernel = _out_kernel(self, d_model)

        def take(a, axis, index):  # This group's heads of `a`.
            return None if a is None else lax.dynamic_slice_in_dim(a, index * size, size, axis)

        @jax.checkpoint
        def group(index):
            group_kernels = {n: take(k, 1, index) for n, k in kernels.items()}
            qk_BxGxLxK, v_BxGxLxK = sequence_map(
                lambda _, x: _project_chunk(self, group_kernels, normalize, x),
                (x_BxLxD,),
                self.position_chunk,
                out_axis=2,
            )
            buckets, rngs, rotations = (
                take(a, axis, index) for a, axis in zip(per_head, (1, 1, 0), strict=True)
            )
            out_BxGxLxK, buckets_BxGxNxL = _per_head(
                one_head, (qk_BxGxLxK, v_BxGxLxK, buckets), mask_BxL, rngs, (rotations,)
            )
            group_out = take(out_kernel, 0, index)
            y_BxLxD = sequence_map(
                lambda i, out: _unproject_chunk(self, group_out, None, i, out),
                (out_BxGxLxK,),
                self.position_chunk,
                in_axis=2,
            )
            return y_BxLxD, buckets_BxGxNxL

        def step(total_BxLxD, index):
            y_BxLxD, buckets_BxGxNxL = group(index)
            return total_BxLxD + y_BxLxD, buckets_BxGxNxL

        y_BxLxD, buckets_PxBxGxNxL = lax.scan(
            step,
            jnp.zeros((batch, length, d_model), jnp.float32),
            jnp.arange(self.n_heads // size, dtype=jnp.int32),
        )
        buckets_BxHxNxL = jnp.moveaxis(buckets_PxBxGxNxL, 0, 1).reshape(
            (batch, self.n_heads) + buckets_PxBxGxNxL.shape[3:]
        )
        if finish is not None:
            y_BxLxD = sequence_map(finish, (y_BxLxD,), self.position_chunk)
        return y_BxLxD, buckets_BxHxNxL
