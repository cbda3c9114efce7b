"""Text from the latest checkpoint of a workdir.

    python -m reformer.sample --config configs/X.py --workdir W --prompt "The " \\
        [--length 200 --temperature 0.8 --top_k 0 --top_p 1.0 --seed 0 --num_samples 1]
    python -m reformer.sample --config configs/reverse.py --workdir W --source_ids 5,6,7 \\
        [--beam_size 4 --alpha 0.6]

Byte-level models (`data.name` enwik8 or text) take the prompt as text (its UTF-8 bytes)
and print text; other models take `--prompt_ids 0,5,7` and print token ids. An
encoder-decoder decodes the target of `--source_ids` (the prompt, if any, starts the
target). `--beam_size N` decodes with beam search (the authors' length penalty,
`--alpha`) instead of sampling. Without `--length`, 200 tokens are generated, or fewer
where the model's positions and `data.seq_len` leave less room after the prompt; a prompt or
a source longer than the model takes (a source: `data.source_len`) is refused in one line.
Only the parameters of the checkpoint are read. Decoding is
cached (`reformer/decoding/sampling.py`); LSH layers decode with `eval.n_hashes` hash rounds (or
`--n_hashes`).
"""

from __future__ import annotations

import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from reformer import data, storage
from reformer.console import log
from reformer.data import images as image_data
from reformer.data import text
from reformer.decoding import beam
from reformer.decoding import cache as decoding_cache
from reformer.decoding import sampling as decode
from reformer.errors import ConfigError
from reformer.evaluation import pictures
from reformer.tokens import END_ID
from reformer.training.state import load_params, make_model

DEFAULT_LENGTH = 200  # Tokens generated without --length, where the model has room.

_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue (byte-level models).")
_PROMPT_IDS = flags.DEFINE_string(
    "prompt_ids", None, "Token ids to continue, comma-separated (any model), e.g. 0,5,7."
)
_LENGTH = flags.DEFINE_integer(
    "length",
    0,
    f"How many tokens (bytes) to generate; 0 = {DEFAULT_LENGTH}, or fewer where the model's "
    "positions (and data.seq_len, the length it trained on) leave less after the prompt.",
)
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens; 0 = all.")
_TOP_P = flags.DEFINE_float(
    "top_p", 1.0, "Sample from the most likely tokens holding this much probability; 1 = all."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples and the LSH rotations.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "How many samples (one batch).")
_SOURCE_IDS = flags.DEFINE_string(
    "source_ids", None, "Encoder-decoders: the source's token ids, comma-separated."
)
_BEAM_SIZE = flags.DEFINE_integer(
    "beam_size", 0, "Beam search with this many beams (1 = greedy); 0 = sample."
)
_ALPHA = flags.DEFINE_float(
    "alpha", beam.LENGTH_PENALTY, "Beam search's length penalty: score / ((5 + len) / 6)^alpha."
)
_OUT = flags.DEFINE_string(
    "out", None, "Image models: the PNG to write (default WORKDIR/samples_<step>.png)."
)
_N_HASHES = flags.DEFINE_integer(
    "n_hashes", 0, "LSH hash rounds when decoding; 0 = config.eval.n_hashes, else the model's."
)


def prompt_tokens(config, prompt: str | None, prompt_ids: str | None) -> np.ndarray:
    """The prompt as token ids `[N]`, checked against the model's vocabulary."""
    byte_model = config.data.name in data.BYTE_DATASETS
    if prompt is not None and prompt_ids is not None:
        raise ConfigError("give --prompt or --prompt_ids, not both")
    if prompt is not None:
        if not byte_model:
            raise ConfigError(
                f"--prompt: text prompts need a byte-level model (data.name in "
                f"{', '.join(data.BYTE_DATASETS)}); this one is {config.data.name!r}: give "
                "token ids with --prompt_ids, e.g. --prompt_ids=0,5,7"
            )
        return text.bytes_to_ids(prompt.encode("utf-8"))
    return parse_ids("--prompt_ids", prompt_ids, config.model.vocab_size)


def parse_ids(flag: str, value: str | None, vocab: int) -> np.ndarray:
    """Comma-separated token ids as int32 `[N]` (empty for None or ""), each checked
    against the vocabulary."""
    if value is None or not value.strip():
        return np.zeros((0,), np.int32)
    try:
        ids = [int(s) for s in value.split(",")]
    except ValueError:
        raise ConfigError(f"{flag}: expected comma-separated integers, got {value!r}") from None
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ConfigError(
            f"{flag}: ids must be in 0..{vocab - 1} (model.vocab_size={vocab}), got {bad[0]}"
        )
    return np.array(ids, np.int32)


def decode_length(config, cfg, prompt_len: int, length: int) -> int:
    """The tokens to generate: `length`, or with 0 `DEFAULT_LENGTH` cut to the room the
    model's positions and `data.seq_len` leave after the prompt; ConfigError in one line when
    they do not fit."""
    limit = min((n for n in (decode.max_positions(cfg), config.data.seq_len) if n), default=0)
    room = limit - prompt_len if limit else DEFAULT_LENGTH
    length = length or min(DEFAULT_LENGTH, max(1, room))
    try:
        decode.check_lengths(cfg, prompt_len, length)
    except ValueError as e:
        raise ConfigError(f"--prompt / --length: {e}") from None
    return length


def check_source(config, cfg, source: np.ndarray) -> None:
    """An encoder-decoder's `--source_ids`: at least one id and at most `data.source_len`
    (the longest source the model trained on) or its positions; ConfigError otherwise."""
    limit = min((n for n in (decode.max_positions(cfg), config.data.source_len) if n), default=0)
    if not source.size:
        raise ConfigError("--source_ids: give at least one source token id")
    if limit and len(source) > limit:
        raise ConfigError(
            f"--source_ids: {len(source)} ids; this model takes sources of at most {limit} "
            f"(data.source_len={config.data.source_len}, model positions "
            f"{decode.max_positions(cfg) or 'unlimited'})"
        )


def sampling_settings() -> decode.Sampling:
    try:
        return decode.Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
    except ValueError as e:
        raise ConfigError(re.sub(r"\b(temperature|top_k|top_p)\b", r"--\1", str(e))) from None


def _model_config(config, model):
    """The decoding config of `model`, with the flags that depend on its kind checked."""
    cfg = decoding_cache.for_data(model.cfg, config.data)
    if cfg.kind not in ("lm", "encoder_decoder"):
        raise ConfigError(
            "config.model.kind: sampling needs a language model ('lm') or an encoder-decoder, "
            f"got {cfg.kind!r}"
        )
    if not cfg.causal:
        raise ConfigError("config.model.causal: decoding needs a causal model (True)")
    if (cfg.kind == "encoder_decoder") != (_SOURCE_IDS.value is not None):
        raise ConfigError(
            "--source_ids: an encoder-decoder decodes from a source (give its ids); "
            "other models take none"
        )
    for flag, value, least in (
        ("--num_samples", _NUM_SAMPLES.value, 1),
        ("--n_hashes", _N_HASHES.value, 0),
        ("--beam_size", _BEAM_SIZE.value, 0),
    ):
        if value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}")
    return cfg


def _decode(cfg, params, prompt_BxN, source_BxS, n_hashes, end_token, length):
    """The tokens `[B, length]` the flags ask for: beam search or sampling."""
    rng = jax.random.key(_SEED.value)
    if _BEAM_SIZE.value:
        tokens, _ = beam.beam_search(
            cfg,
            params,
            prompt_BxN,
            length,
            rng,
            beam_size=_BEAM_SIZE.value,
            alpha=_ALPHA.value,
            end_token=end_token,
            n_hashes=n_hashes,
            source_BxS=source_BxS,
        )
        return tokens, f"beam search, {_BEAM_SIZE.value} beams, alpha {_ALPHA.value}"
    sampling = sampling_settings()
    tokens = decode.generate(
        cfg,
        params,
        prompt_BxN,
        length,
        rng,
        sampling,
        end_token=end_token,
        n_hashes=n_hashes,
        source_BxS=source_BxS,
    )
    return tokens, (
        f"temperature {sampling.temperature}, top_k {sampling.top_k}, top_p {sampling.top_p}, "
        f"seed {_SEED.value}"
    )


def _held_out_images(config, n: int) -> np.ndarray:
    """`n` images (token rows) spread evenly over the test split (the validation split
    without one), the first and the last included."""
    pool = image_data.split_images(config, "test" if config.data.image_test else "validation")
    picks = np.linspace(0, len(pool) - 1, n).round().astype(np.int64)
    return image_data.pixels_to_tokens(pool[picks])


def sample_images(config, cfg, params, step: int, workdir: str, n_hashes: int) -> np.ndarray:
    """Image models: `--num_samples` unconditional samples and as many completions of
    held-out images (their top half given, the bottom half sampled), in one PNG grid: the
    samples in the first row, the held-out images in the second, each one's completion below
    it. Returns the grid."""
    rows, length = _NUM_SAMPLES.value, config.data.seq_len
    shape = tuple(config.data.image_shape)
    originals = _held_out_images(config, rows)
    top = length // shape[0] * (shape[0] // 2)  # The sub-pixels of the top half's rows.
    start = time.time()
    free, how = _decode(cfg, params, jnp.zeros((rows, 0), jnp.int32), None, n_hashes, None, length)
    done, _ = _decode(
        cfg, params, jnp.asarray(originals[:, :top]), None, n_hashes, None, length - top
    )
    completed = np.concatenate([originals[:, :top], np.asarray(done)], axis=1)
    log(
        f"step {step} of {workdir}: {rows} sample(s) and {rows} completion(s) of {shape} "
        f"images in {time.time() - start:.1f} s (with compilation); {how}"
    )
    picture = pictures.grid(
        [[pictures.to_image(r, shape) for r in block] for block in (free, originals, completed)]
    )
    out = _OUT.value or storage.join(workdir, f"samples_{step}.png")
    pictures.write_png(out, picture)
    log(f"Wrote {out}")
    return picture


def sample(config, workdir: str) -> list[np.ndarray]:
    """Generates the samples the flags ask for; returns them as token id arrays (image
    models: writes their picture, `sample_images`)."""
    model = make_model(config)
    cfg = _model_config(config, model)
    if config.data.name == "images":
        params, step = load_params(config, workdir, model, purpose="sample from")
        n_hashes = _N_HASHES.value or config.eval.n_hashes or cfg.n_hashes
        return [sample_images(config, cfg, params, step, workdir, n_hashes)]
    prompt = prompt_tokens(config, _PROMPT.value, _PROMPT_IDS.value)
    source = parse_ids("--source_ids", _SOURCE_IDS.value, cfg.vocab_size)
    if cfg.kind == "encoder_decoder":
        check_source(config, cfg, source)
    length = decode_length(config, cfg, len(prompt), _LENGTH.value)
    params, step = load_params(config, workdir, model, purpose="sample from")
    n_hashes = _N_HASHES.value or config.eval.n_hashes or cfg.n_hashes
    byte_model = config.data.name in data.BYTE_DATASETS
    ends = byte_model or cfg.kind == "encoder_decoder"
    rows = _NUM_SAMPLES.value
    start = time.time()
    tokens, how = _decode(
        cfg,
        params,
        jnp.asarray(np.broadcast_to(prompt, (rows, len(prompt)))),
        jnp.asarray(np.broadcast_to(source, (rows, len(source)))) if source.size else None,
        n_hashes,
        END_ID if ends else None,
        length,
    )
    tokens = np.asarray(tokens)
    hashes = f", {n_hashes} hashes" if "lsh" in cfg.attention_types else ""
    log(
        f"step {step} of {workdir}: {len(tokens)} sample(s) of up to {length} tokens in "
        f"{time.time() - start:.1f} s (with compilation); {how}{hashes}"
    )
    samples = []
    for i, row in enumerate(tokens):
        end = np.flatnonzero(row == END_ID) if ends else np.zeros(0)
        row = row[: end[0] + 1] if end.size else row
        samples.append(row)
        print(f"--- sample {i + 1} ---")
        if byte_model:
            body = text.ids_to_bytes(np.concatenate([prompt, row])).decode("utf-8", "replace")
            print(body + ("\n[end]" if row.size and row[-1] == END_ID else ""))
        else:
            print(",".join(str(t) for t in np.concatenate([prompt, row])))
    sys.stdout.flush()
    return samples


if __name__ == "__main__":
    from reformer import cli

    cli.run("sample", sample, distributed=False)
