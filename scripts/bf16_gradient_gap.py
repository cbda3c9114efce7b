"""How far the reversible stack's bfloat16 gradients are from the plain stack's.

For the 6-layer local + LSH model of `tests/test_reversible.py` (d_model 64, 2 heads of 32,
length 128, batch 2, no dropout, `model.dtype = "bfloat16"`), one line per seed (of the
tokens and the parameters): `||g_rev - g_plain|| / ||g_plain||` over all parameter
gradients, and both bfloat16 gradients' distance from the float32 plain gradient.
`--no_grid` leaves the residual streams off their fixed-point grid
(`ModelConfig.stream_spacing`), to show what the grid does.

    python scripts/bf16_gradient_gap.py --seeds 5
"""

from __future__ import annotations

import argparse
import dataclasses
import os

import jax
import jax.numpy as jnp

from reformer.config import load_config_file
from reformer.model import models as model_lib
from reformer.model.model_config import ModelConfig
from reformer.model.models import ReformerLM

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def gap_config(reversible: bool) -> ModelConfig:
    c = load_config_file(os.path.join(REPO, "configs", "tiny.py")).model
    c.update(
        n_layers=6, attention_types=("lsh", "local"), d_model=64, d_ff=128, n_heads=2,
        d_head=32, lsh_chunk_len=16, local_chunk_len=16, n_hashes=2, dropout=0.0,
        attention_dropout=0.0, position_chunk_size=0, max_len=128, dtype="bfloat16",
        residual="reversible" if reversible else "two_stream",
    )  # fmt: skip
    return ModelConfig.from_config(c)


def relative_difference(a, b) -> float:
    """||a - b|| / ||b|| over all leaves of two gradient trees."""
    pairs = list(zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))
    diff = sum(float(jnp.sum((x - y).astype(jnp.float32) ** 2)) for x, y in pairs)
    return (diff / sum(float(jnp.sum(y.astype(jnp.float32) ** 2)) for _, y in pairs)) ** 0.5


def gaps(seed: int) -> dict:
    tokens = jax.random.randint(jax.random.key(seed), (2, 128), 0, 16)
    rev, plain = gap_config(True), gap_config(False)
    params = ReformerLM(rev).init({"params": jax.random.key(seed + 1)}, tokens)["params"]

    def grads(cfg):
        def loss(params):
            weights = jnp.ones(tokens.shape)
            return ReformerLM(cfg).apply({"params": params}, tokens, weights_BxL=weights)[0]

        return jax.jit(jax.grad(loss))(params)

    g_rev, g_plain = grads(rev), grads(plain)
    g_f32 = grads(dataclasses.replace(plain, dtype="float32"))
    return {
        "seed": seed,
        "rev_vs_plain": relative_difference(g_rev, g_plain),
        "rev_vs_f32": relative_difference(g_rev, g_f32),
        "plain_vs_f32": relative_difference(g_plain, g_f32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1")
    parser.add_argument("--no_grid", action="store_true", help="streams off the grid")
    args = parser.parse_args()
    if args.no_grid:
        model_lib.STREAM_SPACING = None
    print(f"{'seed':>4}  {'rev vs plain':>12}  {'rev vs f32':>10}  {'plain vs f32':>12}")
    for seed in range(args.seeds):
        r = gaps(seed)
        print(
            f"{seed:>4}  {r['rev_vs_plain']:>12.2e}  {r['rev_vs_f32']:>10.2e}  "
            f"{r['plain_vs_f32']:>12.2e}",
            flush=True,
        )


if __name__ == "__main__":
    main()
