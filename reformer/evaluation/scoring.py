"""Scoring parameters on batches: the evaluation step (the training forward pass, or the
decoding caches with `eval.cached`), under other attention types or hash counts than
training's."""

from __future__ import annotations

import dataclasses
import functools

import jax
import ml_collections

from reformer.decoding import cache as decoding_cache
from reformer.decoding import sampling as decode
from reformer.errors import ConfigError
from reformer.model import models
from reformer.model.model_config import retype_layers


def eval_step(params, batch: dict, *, model, n_hashes: int | None) -> dict:
    """Sums of loss, correct predictions and weights over one batch (no dropout)."""
    return models.batch_sums(
        model, params, batch, n_hashes=n_hashes, rngs={"hash": jax.random.key(0)}
    )


def cached_eval_step(params, batch: dict, *, model, n_hashes: int | None) -> dict:
    """`eval_step` through the decoding caches: the logits sampling would draw from."""
    tokens, source = batch["tokens"], batch.get("inputs")
    source_len = 0 if source is None else source.shape[1]
    logits = decode.cached_logits(
        decoding_cache.with_training_length(model.cfg, tokens.shape[1], source_len),
        params,
        tokens,
        jax.random.key(0),
        source,
        n_hashes=n_hashes or model.cfg.n_hashes,
        prefix=tokens.shape[1],
    )
    return models.loss_and_metrics(logits, tokens, batch["weights"])[1]


def make_eval_fn(config: ml_collections.ConfigDict, model, abstract_params):
    """`(trained params, batch) -> metric sums` under `config.eval` (to be jitted).

    With `config.eval.attention_types` set, the trained weights run under other attention
    types (e.g. an LSH model with full shared-QK attention); a pattern whose parameters
    differ from the trained ones is a ConfigError. `eval.n_hashes` sets LSH's hash rounds.
    """
    n_hashes = config.eval.n_hashes or None
    step_fn = cached_eval_step if config.eval.cached else eval_step
    train_types = tuple(config.model.attention_types)
    eval_types = tuple(config.eval.attention_types) or train_types
    if eval_types == train_types:
        return functools.partial(step_fn, model=model, n_hashes=n_hashes)
    eval_model = models.make_model(dataclasses.replace(model.cfg, attention_types=eval_types))

    def convert(params):
        return retype_layers(params, train_types, eval_types)

    expected = jax.eval_shape(
        lambda: models.init_params(eval_model, jax.random.key(0), 1, config.data.seq_len)
    )
    got = jax.eval_shape(convert, abstract_params)
    shapes = lambda t: jax.tree.map(lambda a: (a.shape, a.dtype), t)  # noqa: E731
    if shapes(expected) != shapes(got):
        raise ConfigError(
            f"config.eval.attention_types: {eval_types} cannot run the weights of "
            f"model.attention_types {train_types} (their parameters differ). Weights carry "
            "over between 'lsh' and 'full_shared_qk', and between 'full' and 'local'."
        )
    return lambda params, batch: step_fn(
        convert(params), batch, model=eval_model, n_hashes=n_hashes
    )
