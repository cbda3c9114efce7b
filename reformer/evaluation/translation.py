"""Translation with a trained encoder-decoder: sentences encoded with the workdir's
vocabulary, sorted by length and decoded in batches with beam search through the decoding
caches, put back in input order and detokenized; a split's corpus BLEU with sacreBLEU.

Sources are padded to the length buckets of training (`reformer/data/translation.py`) and
the output may be twice the source's bucket long (at most `data.seq_len`), so a few shapes
are compiled whatever the input. A source longer than the source length (`data.source_len`,
or `reformer.translate --max_source_len`; the end id included) is cut to it with the end id
kept as its last token, and how many were cut is logged: the model never saw a longer source,
and one without its end id reads as an unfinished sentence."""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np

from reformer.console import log
from reformer.data import translation
from reformer.data.tokenizer import Tokenizer
from reformer.decoding import beam
from reformer.decoding import cache as decoding_cache
from reformer.evaluation.bleu import corpus_bleu
from reformer.tokens import END_ID


def output_length(source_bucket: int, seq_len: int) -> int:
    """The longest translation of a source padded to `source_bucket` tokens."""
    return min(seq_len, 2 * source_bucket)


def encode_sources(
    tokenizer: Tokenizer, sentences: Sequence[str], max_len: int
) -> tuple[list[np.ndarray], int]:
    """`(sources, cut)`: each sentence's ids and the end id, int32, at most `max_len` of them
    (a longer one keeps its first `max_len - 1` ids and the end id); `cut` counts those."""
    sources, cut = [], 0
    for ids in tokenizer.encode_batch(sentences):
        if len(ids) + 1 > max_len:
            ids, cut = ids[: max_len - 1], cut + 1
        sources.append(np.asarray([*ids, END_ID], np.int32))
    return sources, cut


def translate(
    config: ml_collections.ConfigDict,
    cfg,
    params,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    *,
    beam_size: int = 4,
    alpha: float = beam.LENGTH_PENALTY,
    batch_size: int = 64,
    progress_every: float = 30.0,
    max_source_len: int = 0,
    limit_name: str = "data.source_len",
) -> list[str]:
    """The translations of `sentences` by the model of `cfg` (its `ModelConfig`), in their
    order (see the module docstring). Sources are cut at `max_source_len` tokens (0:
    `data.source_len`), which `limit_name` names in the log line that counts them."""
    if not sentences:
        return []
    d = config.data
    cfg = decoding_cache.for_data(cfg, d)
    max_len = max_source_len or d.source_len
    sources, cut = encode_sources(tokenizer, sentences, max_len)
    if cut:
        log(
            f"{cut:,} of {len(sentences):,} sentence(s) longer than {limit_name}={max_len} "
            f"subwords (the end id included): cut to the first {max_len - 1} and the end id"
        )
    lengths = translation.bucket_lengths(max_len)
    order = np.argsort([len(s) for s in sources], kind="stable")
    out: list[str] = [""] * len(sentences)
    start = last = time.time()
    for first in range(0, len(order), batch_size):
        rows = order[first : first + batch_size]
        bucket = next(n for n in lengths if n >= max(len(sources[i]) for i in rows))
        source_BxS = np.zeros((batch_size, bucket), np.int32)  # Full batches: one shape.
        source_BxS[:, 0] = END_ID  # Padding rows: an empty sentence.
        for row, i in enumerate(rows):
            source_BxS[row, : len(sources[i])] = sources[i]
        tokens, _ = beam.beam_search(
            cfg,
            params,
            np.zeros((batch_size, 0), np.int32),
            output_length(bucket, d.seq_len),
            jax.random.key(0),
            beam_size=beam_size,
            alpha=alpha,
            source_BxS=source_BxS,
        )
        tokens = np.asarray(tokens)
        for row, i in enumerate(rows):  # One line each, whatever bytes were decoded.
            out[i] = " ".join(tokenizer.decode(tokens[row]).splitlines())
        done = first + len(rows)
        if time.time() - last > progress_every and done < len(order):
            last = time.time()
            log(f"translated {done:,}/{len(order):,} sentences ({done / (last - start):.1f}/s)")
    return out


def translation_bleu(config: ml_collections.ConfigDict, cfg, params, workdir: str):
    """`(translations, scores)` of every pair of `eval.split` (beam search with `eval.beam_size`
    and `eval.alpha`): sacreBLEU cased and uncased against the references, with signatures."""
    tokenizer = translation.vocabulary(config, workdir)
    text, _ = translation.load_split(config, config.eval.split, tokenizer)
    start = time.time()
    hypotheses = translate(
        config,
        cfg,
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
