"""What `python -m reformer.inspect` does: the input it names (text, token ids or an
evaluation example), the workdir's latest parameters, `report.inspect_layer` and the files
`report.write_inspection` writes."""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from reformer import data
from reformer.console import log
from reformer.data import text
from reformer.errors import ConfigError
from reformer.inspection.report import inspect_layer, write_inspection
from reformer.training.state import load_params, make_model


@dataclasses.dataclass(frozen=True)
class Request:
    """The command's flags: the input (exactly one of `text`, `ids`, `example`), the layer,
    the heads (None: all), the windows as `a:b` strings (empty: defaults), the hash rounds
    (0: `eval.n_hashes`, else the model's), the hash seed, a query to draw on its own (-1:
    none), a diagonal to mark (0: none) and the output directory."""

    layer: int
    out: str
    text: str | None = None
    ids: str | None = None
    example: int | None = None
    head: int | None = None
    window: str = ""
    key_window: str = ""
    n_hashes: int = 0
    seed: int = 0
    query: int = -1
    diagonal: int = 0


def parse_window(flag: str, value: str) -> tuple[int, int] | None:
    """`a:b` as `(a, b)`; empty: None."""
    if not value:
        return None
    start, _, stop = value.partition(":")
    try:
        return int(start), int(stop)
    except ValueError:
        raise ConfigError(
            f"{flag}: expected START:STOP positions, e.g. 0:256, got {value!r}"
        ) from None


def _ids(value: str, vocab: int) -> np.ndarray:
    try:
        ids = np.array([int(s) for s in value.split(",") if s.strip()], np.int32)
    except ValueError:
        raise ConfigError(f"--ids: expected comma-separated integers, got {value!r}") from None
    if not ids.size or ids.min() < 0 or ids.max() >= vocab:
        raise ConfigError(f"--ids: give ids in 0..{vocab - 1} (model.vocab_size={vocab})")
    return ids


def input_tokens(config: ml_collections.ConfigDict, request: Request) -> np.ndarray:
    """The tokens `[L]` the model reads: `--text` (byte-level models), `--ids`, or the
    `--example`-th sequence of the evaluation data (`data.make_eval_batches`: the inputs of
    a masked LM, else its tokens)."""
    given = [n for n in ("text", "ids", "example") if getattr(request, n) is not None]
    if len(given) != 1:
        raise ConfigError("give exactly one of --text, --ids and --example")
    if request.text is not None:
        if config.data.name not in data.BYTE_DATASETS:
            raise ConfigError(
                f"--text needs a byte-level model (data.name in {', '.join(data.BYTE_DATASETS)}); "
                f"this one is {config.data.name!r}: give --ids or --example"
            )
        return text.bytes_to_ids(request.text.encode("utf-8"))
    if request.ids is not None:
        return _ids(request.ids, config.model.vocab_size)
    if request.example < 0:
        raise ConfigError(f"--example must be >= 0, got {request.example}")
    config = config.copy_and_resolve_references()
    per_batch = config.eval.batch_size
    with config.unlocked():
        config.eval.num_batches = request.example // per_batch + 1
    batches = data.make_eval_batches(config)
    if len(batches) * per_batch <= request.example:
        raise ConfigError(f"--example {request.example}: the evaluation data has fewer sequences")
    batch = batches[request.example // per_batch]
    rows = batch["inputs"] if config.model.kind == "masked_lm" else batch["tokens"]
    return np.asarray(rows[request.example % per_batch], np.int32)


def inspect_checkpoint(
    config: ml_collections.ConfigDict, workdir: str, request: Request
) -> list[str]:
    """Inspects layer `request.layer` of the workdir's latest checkpoint on the requested
    input and writes the arrays and pictures to `request.out`; returns the paths written."""
    tokens = input_tokens(config, request)
    model = make_model(config)
    n_hashes = request.n_hashes or config.eval.n_hashes or None
    queries = parse_window("--window", request.window)
    keys = parse_window("--key_window", request.key_window)
    params, step = load_params(config, workdir, model, purpose="inspect")
    try:
        arrays = inspect_layer(
            model.cfg,
            params,
            tokens,
            request.layer,
            n_hashes=n_hashes,
            heads=None if request.head is None else (request.head,),
            queries=queries,
            keys=keys,
            hash_key=jax.random.key(request.seed),
        )
        query = None if request.query < 0 else request.query
        paths = write_inspection(arrays, request.out, query=query, diagonal=request.diagonal)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    rounds = int(arrays["n_rounds"])
    log(
        f"step {step} of {workdir}: layer {request.layer} ({arrays['kind']}"
        f"{f', {rounds} hash rounds' if 'buckets' in arrays else ''}) on {len(tokens)} tokens"
    )
    for path in paths:
        log(f"Wrote {path}")
    return paths
