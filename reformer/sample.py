"""Text from the latest checkpoint of a workdir.

    python -m reformer.sample --config configs/X.py --workdir W --prompt "The " \\
        [--length 200 --temperature 0.8 --top_k 0 --top_p 1.0 --seed 0 --num_samples 1]

Byte-level models (`data.name` enwik8 or text) take the prompt as text (its UTF-8 bytes)
and print text; other models take `--prompt_ids 0,5,7` and print token ids. Only the
parameters of the checkpoint are read. Decoding is cached (`reformer/decode.py`); LSH layers
decode with `eval.n_hashes` hash rounds (or `--n_hashes`).
"""

from __future__ import annotations

import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from reformer import checkpoints, data, decode, steps
from reformer.config import ConfigError
from reformer.data import text
from reformer.metrics import log

_PROMPT = flags.DEFINE_string("prompt", None, "Text to continue (byte-level models).")
_PROMPT_IDS = flags.DEFINE_string(
    "prompt_ids", None, "Token ids to continue, comma-separated (any model), e.g. 0,5,7."
)
_LENGTH = flags.DEFINE_integer("length", 200, "How many tokens (bytes) to generate.")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "Sampling temperature; 0 = greedy.")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Sample from the k most likely tokens; 0 = all.")
_TOP_P = flags.DEFINE_float(
    "top_p", 1.0, "Sample from the most likely tokens holding this much probability; 1 = all."
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the samples and the LSH rotations.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "How many samples (one batch).")
_N_HASHES = flags.DEFINE_integer(
    "n_hashes", 0, "LSH hash rounds when decoding; 0 = config.eval.n_hashes, else the model's."
)


def load_params(config, workdir: str):
    """(params, step) of the newest readable checkpoint, parameters only, on one device."""
    checkpoints.check_config_matches(workdir, config)
    model = steps.make_model(config)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    shapes = jax.eval_shape(
        lambda k: steps.init_params(model, k, 1, config.data.seq_len), jax.random.key(0)
    )
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device), shapes
    )
    return checkpoints.restore_params(
        workdir, config.train.keep_checkpoints, abstract, "sample from"
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
    if prompt_ids is None or not prompt_ids.strip():
        return np.zeros((0,), np.int32)
    try:
        ids = [int(s) for s in prompt_ids.split(",")]
    except ValueError:
        raise ConfigError(
            f"--prompt_ids: expected comma-separated integers, got {prompt_ids!r}"
        ) from None
    vocab = config.model.vocab_size
    bad = [i for i in ids if not 0 <= i < vocab]
    if bad:
        raise ConfigError(
            f"--prompt_ids: ids must be in 0..{vocab - 1} (model.vocab_size={vocab}), got {bad[0]}"
        )
    ids = np.array(ids, np.int32)
    return ids


def sampling_settings() -> decode.Sampling:
    try:
        return decode.Sampling(_TEMPERATURE.value, _TOP_K.value, _TOP_P.value)
    except ValueError as e:
        raise ConfigError(re.sub(r"\b(temperature|top_k|top_p)\b", r"--\1", str(e))) from None


def sample(config, workdir: str) -> list[np.ndarray]:
    """Generates the samples the flags ask for; returns them as token id arrays."""
    cfg = decode.with_training_length(steps.make_model(config).cfg, config.data.seq_len)
    if cfg.kind != "lm":
        raise ConfigError(
            f"config.model.kind: sampling needs a language model ('lm'), got {cfg.kind!r}"
        )
    if not cfg.causal:
        raise ConfigError("config.model.causal: decoding needs a causal model (True)")
    if _NUM_SAMPLES.value < 1:
        raise ConfigError(f"--num_samples must be >= 1, got {_NUM_SAMPLES.value}")
    if _N_HASHES.value < 0:
        raise ConfigError(
            f"--n_hashes must be >= 0 (0 = config.eval.n_hashes), got {_N_HASHES.value}"
        )
    sampling = sampling_settings()
    prompt = prompt_tokens(config, _PROMPT.value, _PROMPT_IDS.value)
    try:
        decode.check_lengths(cfg, len(prompt), _LENGTH.value)
    except ValueError as e:
        raise ConfigError(f"--prompt / --length: {e}") from None
    params, step = load_params(config, workdir)
    n_hashes = _N_HASHES.value or config.eval.n_hashes or cfg.n_hashes
    byte_model = config.data.name in data.BYTE_DATASETS
    batch = np.broadcast_to(prompt, (_NUM_SAMPLES.value, len(prompt)))
    start = time.time()
    tokens = decode.generate(
        cfg,
        params,
        jnp.asarray(batch),
        _LENGTH.value,
        jax.random.key(_SEED.value),
        sampling,
        end_token=decode.END_TOKEN if byte_model else None,
        n_hashes=n_hashes,
    )
    tokens = np.asarray(tokens)
    seconds = time.time() - start
    hashes = f", {n_hashes} hashes" if "lsh" in cfg.attention_types else ""
    log(
        f"step {step} of {workdir}: {len(tokens)} sample(s) of up to {_LENGTH.value} tokens in "
        f"{seconds:.1f} s (with compilation); temperature {sampling.temperature}, top_k "
        f"{sampling.top_k}, top_p {sampling.top_p}, seed {_SEED.value}{hashes}"
    )
    samples = []
    for i, row in enumerate(tokens):
        if byte_model:
            end = np.flatnonzero(row == decode.END_TOKEN)
            row = row[: end[0] + 1] if end.size else row
        samples.append(row)
        print(f"--- sample {i + 1} ---")
        if byte_model:
            body = text.ids_to_bytes(np.concatenate([prompt, row])).decode("utf-8", "replace")
            print(body + ("\n[end]" if row.size and row[-1] == decode.END_TOKEN else ""))
        else:
            print(",".join(str(t) for t in np.concatenate([prompt, row])))
    sys.stdout.flush()
    return samples


def main(argv: list[str]) -> None:
    from reformer.train import _CONFIG, _WORKDIR

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    try:
        sample(_CONFIG.value, _WORKDIR.value)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    from reformer.train import parse_flags

    app.run(main, flags_parser=parse_flags)
