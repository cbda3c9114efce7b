"""Scores the latest checkpoint of a workdir.

    python -m reformer.evaluate --config configs/X.py --workdir W \\
        [--config.eval.split=test] [--config.eval.n_hashes=8] \\
        [--config.eval.attention_types="('full_shared_qk',)"] [--config.eval.cached=True]

Prints and writes `W/eval_<split>.json`: loss, bits per token (and `bits_per_byte` on byte
data), accuracy, how many tokens were scored, the step and the evaluation settings. On text
data the split is covered exactly once by contiguous windows (see `reformer/data`), so the
number is exact over the whole split; on the synthetic duplication task `eval.num_batches`
batches drawn with `eval.seed` are scored and `eval.split` only names the file. With
`eval.cached` the tokens are scored through the decoding caches of `reformer/decoding/sampling.py`
(the logits sampling draws from) instead of the training forward pass. An encoder-decoder
with `eval.free_running` also decodes every source greedily through the caches and reports
`exact_match`, the share of targets reproduced exactly (`free_running`).
"""

from __future__ import annotations

if __name__ == "__main__":  # One process of several: become its thin parent before JAX loads.
    from reformer.training import supervise

    supervise.exit_if_parent("evaluate")

import functools
import json
import time

import jax
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from reformer import data, storage
from reformer.config.schema import validate
from reformer.decoding import sampling as decode
from reformer.training import checkpoints, sharding
from reformer.training import loop as trainer
from reformer.training.metrics import log
from reformer.training.optimizer import make_optimizer


def load_params(config: ml_collections.ConfigDict, workdir: str, mesh):
    """(params, step) of the latest checkpoint in `workdir`, laid out over `mesh`."""
    checkpoints.check_config_matches(workdir, config)
    model = trainer.make_model(config)
    abstract = trainer.abstract_state(config, model, make_optimizer(config.optimizer), mesh)
    return checkpoints.restore_params(
        workdir, config.train.keep_checkpoints, abstract.params, "evaluate"
    )


def evaluate_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, *, write: bool = True
) -> dict:
    """Evaluates the latest checkpoint under `config.eval`; returns (and writes) the record."""
    validate(config, num_devices=jax.device_count())
    mesh = sharding.make_mesh(config.mesh)
    params, step = load_params(config, workdir, mesh)
    record = evaluate_params(config, params, step, mesh, workdir=workdir)
    hypotheses = None
    if config.data.name == "translation" and config.eval.beam_size:
        hypotheses, scores = translation_bleu(config, params, workdir)
        record.update(scores)
    if write and jax.process_index() == 0:
        path = storage.join(workdir, f"eval_{config.eval.split}.json")
        if hypotheses is not None:
            record["hypotheses"] = storage.join(workdir, f"eval_{config.eval.split}.hyp.txt")
            storage.write_text(record["hypotheses"], "\n".join(hypotheses) + "\n")
        storage.write_text(path, json.dumps(record, indent=2))
        log(f"Wrote {path}")
    return record


def translation_bleu(config: ml_collections.ConfigDict, params, workdir: str):
    """`(translations, scores)` of every pair of `eval.split` (beam search with `eval.beam_size`
    and `eval.alpha`): sacreBLEU cased and uncased against the references, with signatures."""
    from reformer import translate
    from reformer.data import translation
    from reformer.evaluation.bleu import corpus_bleu

    tokenizer = translation.vocabulary(config, workdir)
    text, _ = translation.load_split(config, config.eval.split, tokenizer)
    start = time.time()
    hypotheses = translate.translate(
        config,
        jax.device_get(params),
        tokenizer,
        text.sources,
        beam_size=config.eval.beam_size,
        alpha=config.eval.alpha,
        batch_size=config.eval.batch_size,
    )
    scores = corpus_bleu(hypotheses, text.targets)
    scores.update(
        beam_size=config.eval.beam_size,
        alpha=config.eval.alpha,
        sentences=len(hypotheses),
        decode_seconds=time.time() - start,
    )
    return hypotheses, scores


def jitted_eval_fn(config: ml_collections.ConfigDict, params, mesh):
    """The jitted `(params, batch) -> metric sums` of `config.eval` (any split)."""
    return jax.jit(
        trainer.make_eval_fn(config, trainer.make_model(config), params),
        out_shardings=sharding.replicated(mesh),
    )


def evaluate_params(
    config: ml_collections.ConfigDict, params, step: int, mesh, eval_fn=None, workdir=None
) -> dict:
    """The evaluation record of `params` (trained with `config.model`) under `config.eval`;
    `eval_fn` (`jitted_eval_fn` of the same eval settings) reuses a compiled function."""
    eval_fn = eval_fn or jitted_eval_fn(config, params, mesh)
    start = time.time()
    rows_fn = functools.partial(sharding.process_rows, mesh)
    batches = data.make_eval_batches(
        config,
        rows=rows_fn(config.eval.batch_size),
        whole_split=True,
        rows_fn=rows_fn,
        workdir=workdir,
    )
    result = trainer.evaluate(eval_fn, params, mesh, batches)
    if config.data.name in data.BYTE_DATASETS:
        result["bits_per_byte"] = result["bits_per_token"]
    if config.eval.free_running:
        result.update(free_running(config, params, batches))
    record = {
        "step": step,
        "split": config.eval.split,
        "dataset": config.data.name,
        "data_path": config.data.path,
        **result,
        **trainer.eval_settings(config),
        "seq_len": config.data.seq_len,
        "seconds": time.time() - start,
        "device": sharding.device_name(),
    }
    return record


def free_running(config: ml_collections.ConfigDict, params, batches: list[dict]) -> dict:
    """Greedy decoding of every source of `batches` through the caches (an encoder-decoder's
    own outputs fed back, with `eval.n_hashes`), up to `data.seq_len` tokens or the end id:
    `exact_match`, the share of targets reproduced exactly (every weighted token), and
    `sequences`. All processes' rows are counted."""
    d = config.data
    cfg = decode.with_training_length(trainer.make_model(config).cfg, d.seq_len, d.source_len)
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


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
    r = evaluate_checkpoint(config, workdir)
    hashes = f", {r['n_hashes']} hashes" if "n_hashes" in r else ""
    unit = "byte" if "bits_per_byte" in r else "token"
    exact = (
        f", exact match {r['exact_match']:.4f} of {r['sequences']} (greedy, free-running)"
        if "exact_match" in r
        else ""
    )
    log(
        f"{r['split']} at step {r['step']}: {r['bits_per_token']:.4f} bits/{unit}, "
        f"accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f} over {r['tokens']:,} tokens "
        f"({'/'.join(r['attention_types'])} attention{hashes}"
        f"{', through the decoding caches' if r.get('cached') else ''}){exact}"
    )
    if "bleu_cased" in r:
        log(
            f"{r['split']} BLEU (sacreBLEU, beam {r['beam_size']}, {r['sentences']:,} "
            f"sentences): {r['bleu_cased']:.2f} cased [{r['signature_cased']}], "
            f"{r['bleu_uncased']:.2f} uncased [{r['signature_uncased']}]"
        )


if __name__ == "__main__":
    from reformer import cli

    cli.run("evaluate", main)
