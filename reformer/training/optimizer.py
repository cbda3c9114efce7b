"""Optimizers and learning-rate schedules named by `config.optimizer`."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import optax


def make_schedule(opt: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate`, then rsqrt decay or constant.

    rsqrt: lr * sqrt(warmup / step) after warmup, i.e. trax's `linear_warmup * rsqrt_decay`
    normalized so that the peak equals `learning_rate`.
    """
    peak, warmup = opt.learning_rate, opt.warmup_steps

    def schedule(step):
        step = jnp.asarray(step, jnp.float32) + 1.0  # The first update uses step 1.
        ramp = jnp.minimum(1.0, step / warmup) if warmup > 0 else 1.0
        if opt.schedule == "rsqrt":
            return peak * ramp * jnp.sqrt(max(warmup, 1) / jnp.maximum(step, max(warmup, 1)))
        return peak * ramp

    return schedule


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Gradient clipping followed by Adam(W) or Adafactor with the schedule."""
    schedule = make_schedule(opt)
    if opt.name == "adam":
        core = optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, eps=opt.eps, weight_decay=opt.weight_decay
        )
    elif opt.name == "adafactor":
        core = optax.adafactor(
            schedule, multiply_by_parameter_scale=False, weight_decay_rate=opt.weight_decay or None
        )
    else:
        raise ValueError(f"config.optimizer.name: unknown optimizer {opt.name!r}")
    if opt.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(opt.clip_norm), core)
    return core
