"""Scoring a workdir's latest checkpoint on a whole split under `config.eval`: token
metrics (bits per token, and per byte on byte data), an encoder-decoder's exact match when
decoding free-running, and a translation split's BLEU. `reformer.evaluate` is its command."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from reformer import data, storage
from reformer.config.validation import validate
from reformer.console import log
from reformer.decoding import cache as decoding_cache
from reformer.decoding import sampling as decode
from reformer.evaluation.scoring import make_eval_fn
from reformer.training import sharding
from reformer.training.metrics import eval_settings
from reformer.training.state import load_params, make_model
from reformer.training.steps import evaluate


def score_checkpoint(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, list | None]:
    """`(record, translations or None)` of the latest checkpoint under `config.eval`."""
    validate(config, num_devices=jax.device_count())
    mesh = sharding.make_mesh(config.mesh)
    model = make_model(config)
    params, step = load_params(config, workdir, model, mesh)
    record = evaluate_params(config, model, params, step, mesh, workdir=workdir)
    hypotheses = None
    if config.data.name == "translation" and config.eval.beam_size:
        from reformer.evaluation.translation import translation_bleu

        hypotheses, scores = translation_bleu(config, model.cfg, params, workdir)
        record.update(scores)
    return record, hypotheses


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, report: Callable[[dict], None] | None = None
) -> dict:
    """Scores the latest checkpoint (`score_checkpoint`), hands the record to `report` (which
    prints it), then writes it to `WORKDIR/eval_<split>.json` (and a translation split's
    translations beside it). A workdir that cannot be written (read-only, no permission)
    costs the files, not the result: it is reported first, and the failed write is one
    line."""
    record, hypotheses = score_checkpoint(config, workdir)
    if report is not None:
        report(record)
    if jax.process_index() == 0:
        path = storage.join(workdir, f"eval_{config.eval.split}.json")
        try:
            if hypotheses is not None:
                record["hypotheses"] = storage.join(workdir, f"eval_{config.eval.split}.hyp.txt")
                storage.write_text(record["hypotheses"], "\n".join(hypotheses) + "\n")
            storage.write_text(path, json.dumps(record, indent=2))
            log(f"Wrote {path}")
        except OSError as e:
            record.pop("hypotheses", None)
            reason = e.strerror or str(e) or type(e).__name__
            log(f"Could not write {path} ({reason}); the result above is not saved.")
    return record


def jitted_eval_fn(config: ml_collections.ConfigDict, model, params, mesh):
    """The jitted `(params, batch) -> metric sums` of `config.eval` (any split)."""
    return jax.jit(make_eval_fn(config, model, params), out_shardings=sharding.replicated(mesh))


def evaluate_params(
    config: ml_collections.ConfigDict, model, params, step: int, mesh, eval_fn=None, workdir=None
) -> dict:
    """The evaluation record of `params` (of `model`, trained with `config.model`) under
    `config.eval`; `eval_fn` (`jitted_eval_fn` of the same settings) reuses a compiled
    function."""
    eval_fn = eval_fn or jitted_eval_fn(config, model, params, mesh)
    start = time.time()
    rows_fn = functools.partial(sharding.process_rows, mesh)
    batches = data.make_eval_batches(
        config,
        rows=rows_fn(config.eval.batch_size),
        whole_split=True,
        rows_fn=rows_fn,
        workdir=workdir,
    )
    result = evaluate(eval_fn, params, mesh, batches)
    if config.data.name in data.BYTE_DATASETS:
        result["bits_per_byte"] = result["bits_per_token"]
    if config.data.name == "images":  # Every sub-pixel of every image is one scored token.
        result["bits_per_dim"] = result["bits_per_token"]
        result["sub_pixels"] = result["tokens"]
        result["images"] = result["tokens"] // config.data.seq_len
    if config.eval.free_running:
        result.update(free_running(config, model.cfg, params, batches))
    return {
        "step": step,
        "split": config.eval.split,
        "dataset": config.data.name,
        "data_path": config.data.path,
        **result,
        **eval_settings(config),
        "seq_len": config.data.seq_len,
        "seconds": time.time() - start,
        "device": sharding.device_name(),
    }


def free_running(config: ml_collections.ConfigDict, cfg, params, batches: list[dict]) -> dict:
    """Greedy decoding of every source of `batches` through the caches (an encoder-decoder's
    own outputs fed back, with `eval.n_hashes`), up to `data.seq_len` tokens or the end id:
    `exact_match`, the share of targets reproduced exactly (every weighted token), and
    `sequences`. All processes' rows are counted."""
    d = config.data
    cfg = decoding_cache.for_data(cfg, d)
    params = jax.device_get(params)
    counts = np.zeros(2, np.int64)  # exact, sequences
    for batch in batches:
        source, target, weights = batch["inputs"], batch["tokens"], batch["weights"]
        tokens = decode.generate(
            cfg,
            params,
            np.zeros((len(source), 0), np.int32),
            d.seq_len,
            jax.random.key(0),
            decode.Sampling(temperature=0.0),
            n_hashes=config.eval.n_hashes or cfg.n_hashes,
            source_BxS=source,
        )
        same = (np.asarray(tokens) == target) | (weights == 0)
        counts += [int(np.all(same, axis=1).sum()), len(source)]
    if jax.process_count() > 1:
        counts = np.asarray(multihost_utils.process_allgather(counts)).sum(0)
    return {"exact_match": float(counts[0] / max(counts[1], 1)), "sequences": int(counts[1])}
