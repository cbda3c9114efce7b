"""A slow NumPy model of `ReformerLM` under the decoding semantics of docs/architecture.md
("Decoding"), one position and one head at a time, in float64.

- full: position t attends to positions 0..t (scaled dot product);
- local: to positions c * (t // c - 1) .. t, c = model.local_chunk_len;
- full_shared_qk: to 0..t with unit-length shared keys, itself at -1e5;
- lsh: to the positions j <= t that share its bucket in at least one hash round (each key
  once), with unit-length shared keys and itself at -1e5.

It shares no code with the decoding path (only the layer-naming rule); the LSH rotations
are its input.
"""

from __future__ import annotations

import numpy as np

from reformer.model.model_config import layer_name

SELF_MASK = -1e5


def _np(tree):
    return {
        k: _np(v) if isinstance(v, dict) else np.asarray(v, np.float64) for k, v in tree.items()
    }


def layer_norm(x, p, eps=1e-6):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu(x):  # flax.linen.gelu (tanh approximation)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def unit(k):
    return k / np.sqrt(np.mean(k * k) + 1e-6) / np.sqrt(k.shape[-1])


def buckets(x, rotations_KxNxR, factors=()):
    """Angular LSH per round; with factors (f1, f2, ...), one hash per slice of f_i / 2
    columns, combined as b1 + f1 * b2 + f1 * f2 * b3 ..."""
    rotated = np.einsum("k,knr->nr", x, rotations_KxNxR)
    sizes = factors or (2 * rotated.shape[-1],)
    total, scale, start = 0, 1, 0
    for f in sizes:
        r = rotated[:, start : start + f // 2]
        total = total + scale * np.argmax(np.concatenate([r, -r], -1), -1)
        start, scale = start + f // 2, scale * f
    return total


def attention(cfg, kind, p, h_LxD, rotations):
    """One attention layer's output `[L, D]` for one sequence."""
    length = h_LxD.shape[0]
    out_LxHxK = np.zeros((length, cfg.n_heads, cfg.d_head))
    proj = {
        name: np.einsum("ld,dhk->lhk", h_LxD, w["kernel"]) for name, w in p.items() if name != "out"
    }
    for hd in range(cfg.n_heads):
        v = proj["value"][:, hd]
        if kind in ("full", "local"):
            q, k = proj["query"][:, hd] / np.sqrt(cfg.d_head), proj["key"][:, hd]
        else:
            q = proj["query_key"][:, hd]
            k = np.stack([unit(x) for x in q])
        if kind == "lsh":
            b = np.stack([buckets(x, rotations[hd], cfg.bucket_factors) for x in q])  # [L, N]
        for t in range(length):
            if kind == "local":
                c = cfg.local_chunk_len
                visible = list(range(max(0, c * (t // c - 1)), t + 1))
            elif kind == "lsh":
                visible = [j for j in range(t + 1) if np.any(b[j] == b[t])]
            else:
                visible = list(range(t + 1))
            logits = np.array([q[t] @ k[j] for j in visible])
            if kind in ("full_shared_qk", "lsh"):
                logits = logits + np.array([SELF_MASK if j == t else 0.0 for j in visible])
            out_LxHxK[t, hd] = softmax(logits) @ v[visible]
    return np.einsum("lhk,hkd->ld", out_LxHxK, p["out"]["kernel"])


def reference_logits(cfg, params, tokens_BxL, rotations_per_layer) -> np.ndarray:
    """Logits `[B, L, V]` of the model under the decoding semantics."""
    params = _np(params)
    tokens = np.asarray(tokens_BxL)
    inputs = np.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
    length = tokens.shape[1]
    pos = np.arange(length)
    if cfg.positional == "axial":
        b = cfg.axial_shape[1]
        table = params["axial_pos"]
        pos_LxD = np.concatenate([table["axial_0"][pos // b], table["axial_1"][pos % b]], -1)
    elif cfg.positional == "learned":
        pos_LxD = params["pos_embed"][:length]
    else:
        pos_LxD = 0.0
    pattern = len(cfg.attention_types)
    result = []
    for row in inputs:
        x1 = x2 = params["embed"]["embedding"][row] + pos_LxD
        for i in range(cfg.n_layers):
            kind = cfg.attention_types[i % pattern]
            layer = params["layers"][layer_name(i % pattern, kind)]
            at = {k: v for k, v in _leaf_map(layer, lambda a, r=i // pattern: a[r]).items()}
            h = layer_norm(x2, at["attention"]["norm"])
            rot = None if rotations_per_layer[i] is None else np.asarray(rotations_per_layer[i])
            x1 = x1 + attention(cfg, kind, at["attention"]["attention"], h, rot)
            ff = at["feed_forward"]["ff"]
            h = layer_norm(x1, at["feed_forward"]["norm"])
            h = gelu(h @ ff["wi_kernel"] + ff["wi_bias"]) @ ff["wo_kernel"] + ff["wo_bias"]
            x2 = x2 + h
        y = layer_norm(np.concatenate([x1, x2], -1), params["final_norm"])
        result.append(y @ params["logits"]["kernel"] + params["logits"]["bias"])
    return np.stack(result)


def _leaf_map(tree, fn):
    return {k: _leaf_map(v, fn) if isinstance(v, dict) else fn(v) for k, v in tree.items()}
