"""d(output)/d(embedded input) of a model, for the tests of causality and padding: taken with
respect to a perturbation added to the output of the model's `embed`, monkeypatched in."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from reformer.model import models


def embedded_jacobian(model, params, inputs_1xL, monkeypatch) -> np.ndarray:
    """d(each position's logits, summed)/d(the embedded inputs), `[L_out, L_in, D]`."""
    embed = models.embed

    def outputs(delta_1xLxD):
        with monkeypatch.context() as patch:
            patch.setattr(models, "embed", lambda *a, **k: embed(*a, **k) + delta_1xLxD)
            return model.apply({"params": params}, inputs_1xL)[0].sum(-1)  # [L]

    zeros = jnp.zeros((*inputs_1xL.shape, model.cfg.d_model))
    return np.asarray(jax.jacrev(outputs)(zeros)[:, 0])
