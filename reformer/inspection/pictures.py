"""Pictures of one layer's inspection (`report.inspect_layer`'s arrays), as matplotlib
figures (no pyplot state: each is a `Figure` of its own).

- buckets: per hash round, each position's bucket, and the bucket sizes;
- attention: a head's weights over the query and key windows, and how many hash rounds let
  each query see each key;
- query: one query's weights over the keys, and the keys each round lets it see.
"""

from __future__ import annotations

import numpy as np
from matplotlib import colors, ticker
from matplotlib.figure import Figure


def _title(arrays, head: int) -> str:
    rounds = int(arrays["n_rounds"])
    hashes = f", {rounds} hash round{'s' * (rounds > 1)}" if "buckets" in arrays else ""
    return f"layer {int(arrays['layer'])} ({arrays['kind']}{hashes}), head {head}"


def buckets_figure(arrays, head: int) -> Figure:
    """Each position's bucket in every hash round of `head` (dots over positions), and how
    many real positions each bucket holds."""
    buckets_NxL, sizes_NxB = arrays["buckets"][head], arrays["bucket_sizes"][head]
    n_rounds, length = buckets_NxL.shape
    n_buckets = int(arrays["n_buckets"])
    fig = Figure(figsize=(11, 1.0 + 2.2 * n_rounds))
    axes = fig.subplots(n_rounds, 2, squeeze=False, gridspec_kw={"width_ratios": [4, 1]})
    positions = np.arange(length)
    for r in range(n_rounds):
        left, right = axes[r]
        left.scatter(positions, buckets_NxL[r], s=6, c=positions, cmap="viridis")
        left.set_xlim(-0.5, length - 0.5)
        left.set_ylim(-0.5, n_buckets - 0.5)
        left.set_ylabel(f"round {r}: bucket")
        for ax in (left, right):
            ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        right.barh(np.arange(n_buckets), sizes_NxB[r], color="tab:gray")
        right.axvline(length / n_buckets, color="tab:red", lw=0.8, ls="--")
        right.set_ylim(-0.5, n_buckets - 0.5)
        right.set_xlabel("positions (dashed: even)" if r == n_rounds - 1 else "")
    axes[-1][0].set_xlabel("position (colour: position)")
    fig.suptitle(f"{_title(arrays, head)}: buckets of {length} positions, {n_buckets} buckets")
    fig.tight_layout()
    return fig


def _extent(arrays) -> list[float]:
    q, k = arrays["queries"], arrays["keys"]
    return [k[0] - 0.5, k[-1] + 0.5, q[-1] + 0.5, q[0] - 0.5]


def _diagonal(ax, arrays, diagonal: int) -> None:
    """The line key = query - `diagonal`, dashed, over the windows."""
    if diagonal <= 0:
        return
    q, k = arrays["queries"], arrays["keys"]
    q = q[(q - diagonal >= k[0]) & (q - diagonal <= k[-1])].astype(float)
    if len(q):
        label = f"key = query - {diagonal}"
        ax.plot(q - diagonal, q, color="tab:red", lw=0.8, ls="--", label=label)
        ax.legend(loc="lower left", fontsize=8)


def attention_figure(arrays, index: int, diagonal: int = 0) -> Figure:
    """Inspected head number `index`: its combined attention weights `[query, key]` (square
    root colour scale, so small weights show), and how many hash rounds let each query see
    each key."""
    weights, seen = arrays["weights"][index], arrays["seen"][index]
    n_rounds = seen.shape[1]
    fig = Figure(figsize=(13, 6))
    left, right = fig.subplots(1, 2)
    image = left.imshow(
        weights,
        aspect="auto",
        extent=_extent(arrays),
        norm=colors.PowerNorm(0.5, 0, 1),
        cmap="magma_r",
        interpolation="nearest",
    )
    fig.colorbar(image, ax=left, label="weight (sum over rounds)")
    left.set_title("attention weights")
    counts = seen.sum(axis=1)
    cmap = colors.ListedColormap(["white"] + [f"C{r % 10}" for r in range(n_rounds)])
    image = right.imshow(
        counts,
        aspect="auto",
        extent=_extent(arrays),
        cmap=cmap,
        vmin=-0.5,
        vmax=n_rounds + 0.5,
        interpolation="nearest",
    )
    fig.colorbar(image, ax=right, ticks=range(n_rounds + 1), label="rounds that see the key")
    right.set_title("keys the hash rounds let each query see")
    for ax in (left, right):
        ax.set_xlabel("key position")
        ax.set_ylabel("query position")
        _diagonal(ax, arrays, diagonal)
    head = int(arrays["heads"][index])
    fig.suptitle(f"{_title(arrays, head)}: queries {arrays['queries'][0]}..{arrays['queries'][-1]}")
    fig.tight_layout()
    return fig


def query_figure(arrays, index: int, query: int, diagonal: int = 0) -> Figure:
    """One query of inspected head number `index`: its weight on each key of the window,
    and below, per hash round, the keys that round lets it see (with the round's share)."""
    row = int(np.searchsorted(arrays["queries"], query))
    if row >= len(arrays["queries"]) or arrays["queries"][row] != query:
        raise ValueError(f"query {query} is not in the query window")
    keys, weights = arrays["keys"], arrays["weights"][index, row]
    seen, shares = arrays["seen"][index, row], arrays["round_weights"][index, row]
    n_rounds = seen.shape[0]
    fig = Figure(figsize=(11, 2.6 + 0.45 * n_rounds))
    top, bottom = fig.subplots(
        2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1 + n_rounds / 3]}
    )
    top.bar(keys, weights, width=1.0, color="tab:blue")
    top.set_ylabel("weight")
    for r in range(n_rounds):
        where = keys[seen[r]]
        bottom.scatter(where, np.full(len(where), r), s=40, color=f"C{r % 10}", marker="|")
    bottom.set_yticks(range(n_rounds), [f"round {r} ({shares[r]:.0%})" for r in range(n_rounds)])
    bottom.set_ylim(n_rounds - 0.5, -0.5)
    bottom.set_xlabel("key position")
    for ax in (top, bottom):
        ax.axvline(query, color="gray", lw=0.8, ls=":")
        if diagonal > 0:
            ax.axvline(query - diagonal, color="tab:red", lw=0.8, ls="--")
    twin = f"; dashed: key {query - diagonal}" if diagonal > 0 else ""
    head = int(arrays["heads"][index])
    fig.suptitle(
        f"{_title(arrays, head)}: query {query} (dotted){twin}; "
        f"{weights.sum():.1%} of its weight in the key window"
    )
    fig.tight_layout()
    return fig
