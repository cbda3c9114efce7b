"""Translation with a trained encoder-decoder (`data.name = "translation"`).

    python -m reformer.translate --config configs/multi30k.py:cpu --workdir W \\
        --text "A man is riding a bike."
    python -m reformer.translate --config configs/multi30k.py:cpu --workdir W \\
        --input sentences.en --output sentences.de [--beam_size 4 --alpha 0.6 --batch_size 64]

Beam search through the decoding caches (beam 4 and the authors' length penalty 0.6 by
default; `--beam_size 1` is greedy), as `reformer/evaluation/translation.py` describes;
`reformer.evaluate` scores a split this way with sacreBLEU.

A sentence longer than `data.source_len` subwords (the end id included; the longest source
the model trained on) is cut to that length with the end id kept as its last token, and a
line says how many were cut; `--max_source_len N` cuts at N instead, up to the model's
positions. `--input` must be UTF-8 text with at least one line: a byte that is not UTF-8 is
refused with the file, line and column, not replaced.
"""

from __future__ import annotations

import sys
import time

from absl import flags

from reformer import storage
from reformer.console import log
from reformer.data import translation
from reformer.data.text import DataError
from reformer.decoding import beam
from reformer.decoding.sampling import max_positions
from reformer.errors import ConfigError
from reformer.evaluation.translation import translate
from reformer.training.state import load_params, make_model

_FLAGS: dict = {}  # Defined only when this module is the command.


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
    _FLAGS["max_source_len"] = flags.DEFINE_integer(
        "max_source_len",
        0,
        "Longer sentences (subwords, the end id included) are cut to this many with the end "
        "id kept, and counted; 0 = data.source_len. At most the model's positions.",
    )


def _max_source_len(config, cfg) -> tuple[int, str]:
    """`(limit, its name)` of the sources: --max_source_len, checked, or data.source_len."""
    value = _FLAGS["max_source_len"].value
    if not value:
        return config.data.source_len, "data.source_len"
    limit = max_positions(cfg)
    if value < 2 or (limit is not None and value > limit):
        raise ConfigError(
            f"--max_source_len: must be 0 (data.source_len={config.data.source_len}) or "
            f"2..{limit if limit is not None else 'any'} (the model's positions), got {value}"
        )
    return value, "--max_source_len"


def read_sentences(path: str) -> list[str]:
    """The lines of --input: a UTF-8 file with at least one line."""
    storage.check(path, "--input")
    if not storage.isfile(path):
        raise ConfigError(f"--input: no such file: {path}")
    sentences = translation.read_lines(path, "--input")
    if not sentences:
        raise ConfigError(f"--input: {path} is empty: no sentence to translate")
    return sentences


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
    sentences = [text] if input_path is None else read_sentences(input_path)
    model = make_model(config)
    max_source_len, limit_name = _max_source_len(config, model.cfg)
    params, step = load_params(config, workdir, model, purpose="translate with")
    start = time.time()
    outputs = translate(
        config,
        model.cfg,
        params,
        tokenizer,
        sentences,
        beam_size=beam_size,
        alpha=alpha,
        batch_size=min(batch_size, len(sentences)),
        max_source_len=max_source_len,
        limit_name=limit_name,
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
