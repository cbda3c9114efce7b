"""One input through one layer: its buckets and attention weights as arrays
(`inspect_layer`), written as an `.npz` and PNG pictures (`write_inspection`).

The arrays (`H` heads of the layer, `h` of them inspected, `N` hash rounds, `Q` queries
and `K` keys of the windows, `E` entries a query reads per round):

- `tokens` `[L]`: the input; `layer`, `kind`, `n_rounds`: the layer, its attention type and
  its hash rounds (1 if not LSH); `heads` `[h]`: the inspected heads; `queries` `[Q]`,
  `keys` `[K]`: the positions of the windows;
- LSH layers: `buckets` `[H, N, L]`, each head's bucket of every position in every round;
  `bucket_sizes` `[H, N, n_buckets]`, the real positions per bucket; `n_buckets`;
- `weights` `[h, Q, K]`: each query's combined attention weight on each key of the window;
  `outside` `[h, Q]`: the weight it puts on keys outside the key window;
- `seen` `[h, Q, N, K]`: whether round n lets the query see the key (`patterns.Pattern`);
  `round_weights` `[h, Q, N]`: each round's share of the query's attention;
- chunked layers (LSH, local): `entry_keys`, `entry_weights`, `entry_visible` `[h, Q, N, E]`,
  every key a query reads, also outside the key window.
"""

from __future__ import annotations

import functools
import io

import jax
import jax.numpy as jnp
import numpy as np

from reformer import storage
from reformer.inspection import pictures
from reformer.inspection.capture import capture_layer
from reformer.inspection.patterns import expand, head_plan, n_buckets_of, window_maps
from reformer.model.model_config import ModelConfig

MAX_WINDOW = 2048  # positions in a window: the maps are [queries, keys] per head
DEFAULT_QUERIES = 512  # the query window without `queries`: the first positions
DEFAULT_KEYS_BACK = 1024  # the key window without `keys`: this far before and after


def windows(length: int, queries=None, keys=None) -> tuple[tuple[int, int], tuple[int, int]]:
    """The query and key windows `(start, stop)`: the given ones, checked, or the first
    `DEFAULT_QUERIES` positions and the keys up to `DEFAULT_KEYS_BACK` around them."""
    q0, q1 = queries or (0, min(length, DEFAULT_QUERIES))
    k0, k1 = keys or (max(0, q1 - DEFAULT_KEYS_BACK), min(length, q0 + DEFAULT_KEYS_BACK))
    for name, (a, b) in (("query", (q0, q1)), ("key", (k0, k1))):
        if not 0 <= a < b <= length:
            raise ValueError(f"{name} window {a}:{b} is not within the {length} positions")
        if b - a > MAX_WINDOW:
            raise ValueError(f"{name} window {a}:{b} is longer than {MAX_WINDOW} positions")
    return (q0, q1), (k0, k1)


def _head_arrays(module, kind, length, q_window, k_window, projections, mask_L, buckets_NxL):
    """One head's window arrays (`inspect_layer`), to be jitted."""
    plan = head_plan(module, kind, mask_L, buckets_NxL, length)
    if "query_key" in projections:
        q_LxK, k_LxK = projections["query_key"], None
    else:
        q_LxK, k_LxK = projections["query"], projections["key"]
    pattern = expand(plan, q_LxK, k_LxK, jnp.arange(*q_window))
    weights, seen = window_maps(pattern, *k_window)
    out = {
        "weights": weights,
        "outside": 1.0 - jnp.sum(weights, axis=-1),
        "seen": seen,
        "round_weights": pattern.round_weights_QxN,
    }
    if plan.cfg is not None:  # Full attention's entries are every key: the map holds them.
        out["entry_keys"] = pattern.keys_QxNxE
        out["entry_weights"] = pattern.weights_QxNxE
        out["entry_visible"] = pattern.visible_QxNxE
    return out


def _bucket_arrays(capture, length: int) -> dict[str, np.ndarray]:
    """LSH layers: the buckets of every head `[H, N, L]` and the bucket sizes."""
    if capture.buckets is None:
        return {}
    buckets = np.asarray(capture.buckets[0])
    n_buckets = n_buckets_of(capture.module, length)
    real = np.ones(length, bool) if capture.mask is None else np.asarray(capture.mask[0])
    sizes = np.apply_along_axis(lambda b: np.bincount(b[real], minlength=n_buckets), -1, buckets)
    return {"buckets": buckets, "bucket_sizes": sizes, "n_buckets": np.int32(n_buckets)}


def inspect_layer(
    cfg: ModelConfig,
    params,
    tokens_L,
    layer: int,
    *,
    n_hashes: int | None = None,
    heads=None,
    queries: tuple[int, int] | None = None,
    keys: tuple[int, int] | None = None,
    hash_key: jax.Array | None = None,
) -> dict[str, np.ndarray]:
    """The buckets and attention weights of layer `layer` on `tokens_L` (the model's tokens:
    the LM shifts them itself), as the model's forward pass computes them when applied with
    `rngs={"hash": hash_key}` (default `jax.random.key(0)`, as evaluation applies it) and
    `n_hashes` rounds (None: the model's). `heads` (default all) are expanded over the
    windows `queries` and `keys` (`windows`). The arrays are in the module docstring."""
    tokens_L = np.asarray(tokens_L, np.int32)
    length = len(tokens_L)
    q_window, k_window = windows(length, queries, keys)
    heads = tuple(range(cfg.n_heads)) if heads is None else tuple(heads)
    bad = [h for h in heads if not 0 <= h < cfg.n_heads]
    if bad:
        raise ValueError(f"head {bad[0]}: the layer has heads 0..{cfg.n_heads - 1}")
    hash_key = jax.random.key(0) if hash_key is None else hash_key
    capture = capture_layer(cfg, params, tokens_L[None], layer, hash_key, n_hashes)
    fn = jax.jit(
        functools.partial(_head_arrays, capture.module, capture.kind, length, q_window, k_window)
    )
    mask = None if capture.mask is None else capture.mask[0]
    per_head = []
    for h in heads:
        projections = {name: a[0, h] for name, a in capture.projections.items()}
        buckets = None if capture.buckets is None else capture.buckets[0, h]
        per_head.append(jax.device_get(fn(projections, mask, buckets)))
    arrays = {
        "tokens": tokens_L,
        "layer": np.int32(layer),
        "kind": np.array(capture.kind),
        "n_rounds": np.int32(per_head[0]["round_weights"].shape[-1]),
        "heads": np.array(heads, np.int32),
        "queries": np.arange(*q_window, dtype=np.int32),
        "keys": np.arange(*k_window, dtype=np.int32),
        **_bucket_arrays(capture, length),
    }
    for name in per_head[0]:
        arrays[name] = np.stack([np.asarray(p[name]) for p in per_head])
    return arrays


def _write(path: str, write) -> str:
    buffer = io.BytesIO()
    write(buffer)
    storage.write_bytes(path, buffer.getvalue())
    return path


def write_inspection(
    arrays: dict[str, np.ndarray], out: str, *, query: int | None = None, diagonal: int = 0
) -> list[str]:
    """Writes `arrays` (`inspect_layer`) into the directory `out`: `layer<N>.npz`, and per
    inspected head `layer<N>_head<h>_buckets.png` (LSH), `layer<N>_head<h>_attention.png`
    and, given a `query` position, `layer<N>_head<h>_query<q>.png`. `diagonal` > 0 draws
    the keys `diagonal` positions before each query. Returns the paths written."""
    storage.prepare_dir(out, "--out")
    layer = int(arrays["layer"])
    base = storage.join(out, f"layer{layer}")
    paths = [_write(f"{base}.npz", lambda f: np.savez_compressed(f, **arrays))]
    for i, h in enumerate(arrays["heads"]):
        figures = []
        if "buckets" in arrays:
            figures.append(("buckets", pictures.buckets_figure(arrays, int(h))))
        figures.append(("attention", pictures.attention_figure(arrays, i, diagonal)))
        if query is not None:
            figures.append((f"query{query}", pictures.query_figure(arrays, i, query, diagonal)))
        for name, figure in figures:
            paths.append(_write(f"{base}_head{h}_{name}.png", functools.partial(_png, figure)))
    return paths


def _png(figure, f) -> None:
    figure.savefig(f, format="png", dpi=110)
