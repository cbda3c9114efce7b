"""Translation with a trained encoder-decoder (`data.name = "translation"`).

    python -m reformer.translate --config configs/multi30k.py:cpu --workdir W \\
        --text "A man is riding a bike."
    python -m reformer.translate --config configs/multi30k.py:cpu --workdir W \\
        --input sentences.en --output sentences.de [--beam_size 4 --alpha 0.6 --batch_size 64]

Sentences are encoded with the workdir's vocabulary, sorted by length and decoded in batches
with beam search through the decoding caches (beam 4 and the authors' length penalty 0.6 by
default; `--beam_size 1` is greedy), then put back in input order and detokenized. Sources are
padded to the length buckets of training (`reformer/data/translation.py`) and the output may
be twice the source's bucket long (at most `data.seq_len`), so a few shapes are compiled
whatever the input. `reformer.evaluate` scores a split this way with sacreBLEU.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags

from reformer import evaluate, storage
from reformer.config.schema import ConfigError
from reformer.data import translation
from reformer.data.text import DataError
from reformer.data.tokenizer import END_ID, Tokenizer
from reformer.decoding import beam
from reformer.decoding import sampling as decode
from reformer.training import sharding, steps
from reformer.training.metrics import log

_FLAGS: dict = {}  # Defined only when this module is the command (evaluate imports it too).


def _define_flags() -> None:
    _FLAGS["text"] = flags.DEFINE_string("text", None, "One sentence to translate.")
    _FLAGS["input"] = flags.DEFINE_string(
        "input", None, "A file of sentences, one a line (local or gs://)."
    )
    _FLAGS["output"] = flags.DEFINE_string(
        "output", None, "Where to write the translations of --input."
    )
    _FLAGS["beam_size"] = flags.DEFINE_integer("beam_size", 4, "Beams; 1 = greedy.")
    _FLAGS["alpha"] = flags.DEFINE_float(
        "alpha", beam.LENGTH_PENALTY, "Beam search's length penalty."
    )
    _FLAGS["batch_size"] = flags.DEFINE_integer("batch_size", 64, "Sentences decoded together.")


def output_length(source_bucket: int, seq_len: int) -> int:
    """The longest translation of a source padded to `source_bucket` tokens."""
    return min(seq_len, 2 * source_bucket)


def translate(
    config,
    params,
    tokenizer: Tokenizer,
    sentences: Sequence[str],
    *,
    beam_size: int = 4,
    alpha: float = beam.LENGTH_PENALTY,
    batch_size: int = 64,
    progress_every: float = 30.0,
) -> list[str]:
    """The translations of `sentences`, in their order (see the module docstring)."""
    d = config.data
    cfg = decode.with_training_length(steps.make_model(config).cfg, d.seq_len, d.source_len)
    sources = [
        np.asarray([*ids, END_ID][: d.source_len], np.int32)
        for ids in tokenizer.encode_batch(sentences)
    ]
    lengths = translation.bucket_lengths(d.source_len)
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


def main(config, workdir: str) -> None:
    text, input_path, output = (_FLAGS[k].value for k in ("text", "input", "output"))
    beam_size, alpha, batch_size = (_FLAGS[k].value for k in ("beam_size", "alpha", "batch_size"))
    if config.data.name != "translation":
        raise ConfigError(
            f"config.data.name: reformer.translate needs a translation model, got "
            f"{config.data.name!r}"
        )
    if (text is None) == (input_path is None):
        raise ConfigError("give --text SENTENCE or --input FILE (one of them)")
    if beam_size < 1 or batch_size < 1:
        raise ConfigError("--beam_size and --batch_size must be at least 1")
    try:
        tokenizer = translation.vocabulary(config, workdir)
    except DataError as e:
        raise ConfigError(str(e)) from e
    if input_path is not None:
        storage.check(input_path, "--input")
        if not storage.isfile(input_path):
            raise ConfigError(f"--input: no such file: {input_path}")
        sentences = storage.read_text(input_path).splitlines()
    else:
        sentences = [text]
    params, step = evaluate.load_params(config, workdir, sharding.make_mesh(config.mesh))
    start = time.time()
    outputs = translate(
        config,
        params,
        tokenizer,
        sentences,
        beam_size=beam_size,
        alpha=alpha,
        batch_size=min(batch_size, len(sentences)),
    )
    seconds = time.time() - start
    log(
        f"step {step} of {workdir}: {len(sentences):,} sentence(s) in {seconds:.1f} s "
        f"({len(sentences) / seconds:.1f}/s with compilation), beam {beam_size}"
    )
    if output:
        storage.write_text(storage.check(output, "--output"), "\n".join(outputs) + "\n")
        log(f"Wrote {output}")
    else:
        for line in outputs:
            print(line)
    sys.stdout.flush()


if __name__ == "__main__":
    from reformer import cli

    _define_flags()
    cli.run("translate", main, distributed=False)
