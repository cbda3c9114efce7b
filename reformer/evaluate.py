"""Scores the latest checkpoint of a workdir.

    python -m reformer.evaluate --config configs/X.py --workdir W \\
        [--config.eval.split=test] [--config.eval.n_hashes=8] \\
        [--config.eval.attention_types="('full_shared_qk',)"] [--config.eval.cached=True]

Prints, then writes `W/eval_<split>.json` (a workdir that cannot be written gets the
printed result and one line saying so): loss, bits per token (and `bits_per_byte` on byte
data; `bits_per_dim`, `images` and `sub_pixels` on images), accuracy, how many tokens were
scored, the step and the evaluation settings. On text data the split is covered exactly once
by contiguous windows, on image data by its images (see `reformer/data`), so the number is
exact over the whole split; on the synthetic duplication task `eval.num_batches` batches
drawn with `eval.seed` are scored and `eval.split` only names the file. With `eval.cached`
the tokens are scored through the decoding caches (the logits sampling draws from) instead
of the training forward pass. An encoder-decoder with `eval.free_running` also decodes every
source greedily through the caches and reports `exact_match`, the share of targets
reproduced exactly. The work is done by `reformer/evaluation/checkpoint.py`.
"""

from __future__ import annotations

if __name__ == "__main__":  # One process of several: become its thin parent before JAX loads.
    from reformer.training import supervise

    supervise.exit_if_parent("evaluate")

import ml_collections

from reformer.console import log
from reformer.evaluation.checkpoint import evaluate_checkpoint


def main(config: ml_collections.ConfigDict, workdir: str) -> None:
    evaluate_checkpoint(config, workdir, report=report)


def report(r: dict) -> None:
    """Prints the evaluation record `r` (before it is written: a read-only workdir still
    shows the result)."""
    hashes = f", {r['n_hashes']} hashes" if "n_hashes" in r else ""
    unit = "byte" if "bits_per_byte" in r else "dim" if "bits_per_dim" in r else "token"
    images = f" ({r['images']:,} images)" if "images" in r else ""
    exact = (
        f", exact match {r['exact_match']:.4f} of {r['sequences']} (greedy, free-running)"
        if "exact_match" in r
        else ""
    )
    log(
        f"{r['split']} at step {r['step']}: {r['bits_per_token']:.4f} bits/{unit}, "
        f"accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f} over {r['tokens']:,} tokens{images} "
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
