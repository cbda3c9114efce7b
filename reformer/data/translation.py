"""Parallel text for translation: two aligned files (one sentence a line), encoded with the
shared subword vocabulary (`reformer/data/tokenizer.py`), filtered by length, and batched by a
token budget over a few fixed lengths.

- Reading: the two files must have as many lines; a pair with an empty side is skipped and
  counted, never an error. Or a TFDS translation dataset (`data.tfds_name`, e.g.
  `wmt14_translate/de-en`), prepared into `data.tfds_dir` as `array_record` files (downloaded
  where there is a network, read from the prepared directory otherwise; no TensorFlow), its
  splits train / validation / test and its language features `data.source_lang` /
  `data.target_lang`.
- Encoding: the source is its ids and the end id 1; the target (`tokens`) is its ids and the
  end id, weighted 1 up to and including the end id (the decoder's input is `tokens` shifted
  right behind the start input 0). A pair longer than the limits on either side (end id
  included) is dropped and counted.
- Batches: every pair goes to the shortest length bucket `L` (`bucket_lengths`: 8, 16, 32, ...
  up to the limit) that holds both sides; a batch of bucket `L` is `rows(L)` pairs of `L`
  positions each (source and target), `rows(L)` the token budget over `L`, rounded down to a
  multiple of `row_multiple` (the devices the batch is split over). So a batch holds about the
  same number of tokens whatever its length, pairs of similar length share a batch (little
  padding), and the train step compiles once per bucket. An epoch shuffles the pairs within
  each bucket and then the order of all batches, with `(seed, epoch)`; every pair is in
  exactly one batch of the epoch (a bucket's last batch is filled with weight-0 rows).
- Position: `(epoch, index)`, two integers, saved in each checkpoint; every host computes the
  same global batches and keeps its rows (`rows_fn`), so resuming, on any number of hosts,
  continues the same stream.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from reformer import storage
from reformer.data import tokenizer as vocab
from reformer.data.text import DataError
from reformer.data.tokenizer import Tokenizer
from reformer.tokens import END_ID

SMALLEST_BUCKET = 8
VOCAB_FILE = "vocab.model"  # The vocabulary in the workdir when data.vocab_path is "".


@dataclasses.dataclass
class ParallelText:
    sources: list[str]
    targets: list[str]
    skipped_empty: int  # Pairs with an empty side, left out.


def read_lines(path: str, label: str) -> list[str]:
    """The lines of a UTF-8 text file (a final newline is not an extra empty line; a "\\r"
    before a newline is dropped). Text that is not UTF-8 is refused, not replaced: a DataError
    names `label` (the field or flag), the file and the line and column of the first bad
    byte."""
    raw = storage.read_bytes(path)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        column = e.start - raw.rfind(b"\n", 0, e.start)
        raise DataError(
            f"{label}: {path} line {line:,}: not UTF-8 (byte 0x{raw[e.start]:02x} at byte "
            f"{column:,} of the line); the text must be UTF-8"
        ) from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_parallel(source_path: str, target_path: str, field: str = "data") -> ParallelText:
    """The aligned sentences of two files (one a line)."""
    texts = []
    for path in (source_path, target_path):
        if not storage.isfile(path):
            raise DataError(f"config.{field}: no such file: {path}")
        texts.append(read_lines(path, f"config.{field}"))
    sources, targets = texts
    if len(sources) != len(targets):
        raise DataError(
            f"config.{field}: {source_path} has {len(sources):,} lines but {target_path} has "
            f"{len(targets):,}; the two files must be aligned, one sentence pair a line"
        )
    keep = [
        i for i, (s, t) in enumerate(zip(sources, targets, strict=True)) if s.strip() and t.strip()
    ]
    return ParallelText(
        [sources[i].strip() for i in keep],
        [targets[i].strip() for i in keep],
        len(sources) - len(keep),
    )


@dataclasses.dataclass
class EncodedPairs:
    sources: list[np.ndarray]  # Ids and the end id, int32.
    targets: list[np.ndarray]
    too_long: int  # Pairs dropped for a side longer than its limit.
    kept: np.ndarray  # Index of each kept pair in the text.


def encode_pairs(
    tokenizer: Tokenizer, text: ParallelText, max_source_len: int, max_target_len: int
) -> EncodedPairs:
    """The pairs as ids with the end id; pairs over the limits (end id included) dropped."""
    sources = tokenizer.encode_batch(text.sources)
    targets = tokenizer.encode_batch(text.targets)
    kept = [
        i
        for i, (s, t) in enumerate(zip(sources, targets, strict=True))
        if len(s) + 1 <= max_source_len and len(t) + 1 <= max_target_len
    ]
    return EncodedPairs(
        [np.asarray([*sources[i], END_ID], np.int32) for i in kept],
        [np.asarray([*targets[i], END_ID], np.int32) for i in kept],
        len(sources) - len(kept),
        np.asarray(kept, np.int64),
    )


def bucket_lengths(max_len: int, smallest: int = SMALLEST_BUCKET) -> tuple[int, ...]:
    """8, 16, 32, ... below `max_len`, and `max_len`."""
    lengths, n = [], smallest
    while n < max_len:
        lengths.append(n)
        n *= 2
    return (*lengths, max_len)


def bucket_rows(length: int, token_budget: int, row_multiple: int) -> int:
    """Pairs per batch of bucket `length`: the budget's worth, a multiple of `row_multiple`."""
    return max(row_multiple, token_budget // length // row_multiple * row_multiple)


def assign_buckets(pairs: EncodedPairs, lengths: Sequence[int]) -> np.ndarray:
    """The bucket (an index into `lengths`) of every pair: the shortest holding both sides."""
    longest = np.asarray(
        [max(len(s), len(t)) for s, t in zip(pairs.sources, pairs.targets, strict=True)]
    )
    return np.searchsorted(np.asarray(lengths), longest, side="left")


def epoch_batches(
    buckets: np.ndarray,
    lengths: Sequence[int],
    token_budget: int,
    row_multiple: int,
    seed: int | None,
    epoch: int = 0,
) -> list[tuple[int, np.ndarray]]:
    """`(length, pair indices)` of every batch of an epoch; with `seed` None nothing is
    shuffled (evaluation: the pairs in order within each bucket, buckets in order)."""
    rng = None if seed is None else np.random.default_rng([seed, epoch, 7])
    batches = []
    for b, length in enumerate(lengths):
        members = np.flatnonzero(buckets == b)
        if rng is not None:
            members = rng.permutation(members)
        rows = bucket_rows(length, token_budget, row_multiple)
        batches += [(length, members[i : i + rows]) for i in range(0, len(members), rows)]
    if rng is not None:
        batches = [batches[i] for i in rng.permutation(len(batches))]
    return batches


def make_batch(
    pairs: EncodedPairs, indices: np.ndarray, length: int, rows: int
) -> dict[str, np.ndarray]:
    """`inputs` (sources), `tokens` (targets) and `weights` of `rows` x `length`; rows past
    `indices` are padding with weight 0."""
    inputs = np.zeros((rows, length), np.int32)
    tokens = np.zeros((rows, length), np.int32)
    for row, i in enumerate(indices):
        source, target = pairs.sources[i], pairs.targets[i]
        inputs[row, : len(source)] = source
        tokens[row, : len(target)] = target
    return {"inputs": inputs, "tokens": tokens, "weights": (tokens != 0).astype(np.float32)}


class TokenBudgetStream:
    """The endless training stream (see the module docstring); `get_state` / `set_state`
    give its position for checkpoints."""

    def __init__(
        self,
        pairs: EncodedPairs,
        *,
        max_len: int,
        token_budget: int,
        seed: int,
        row_multiple: int = 1,
        rows_fn: Callable[[int], slice] | None = None,
    ):
        if not pairs.sources:
            raise DataError("config.data: no sentence pair is left to train on")
        self.pairs, self.seed = pairs, seed
        self.lengths = bucket_lengths(max_len)
        self.token_budget, self.row_multiple = token_budget, row_multiple
        self._rows_fn = rows_fn or (lambda n: slice(0, n))
        self._buckets = assign_buckets(pairs, self.lengths)
        self.epoch, self.index = 0, 0
        self._batches = self._epoch(0)

    def _epoch(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        return epoch_batches(
            self._buckets, self.lengths, self.token_budget, self.row_multiple, self.seed, epoch
        )

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self.index == len(self._batches):
            self.epoch, self.index = self.epoch + 1, 0
            self._batches = self._epoch(self.epoch)
        length, indices = self._batches[self.index]
        self.index += 1
        rows = bucket_rows(length, self.token_budget, self.row_multiple)
        batch = make_batch(self.pairs, indices, length, rows)
        mine = self._rows_fn(rows)
        return {k: v[mine] for k, v in batch.items()}

    def get_state(self) -> dict:
        return {"name": "translation", "seed": self.seed, "epoch": self.epoch, "index": self.index}

    def set_state(self, state: dict) -> None:
        if state.get("name") != "translation" or state.get("seed") != self.seed:
            raise ValueError(
                f"data state {state} does not belong to a translation stream with seed {self.seed}"
            )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._batches = self._epoch(self.epoch)


def _tfds_builder(name: str, data_dir: str):
    """The TFDS builder `name`, writing and reading `array_record` files under `data_dir`."""
    import importlib

    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    # TFDS registers a dataset when its module is imported; the translation ones (wmt14,
    # wmt_t2t, ...) are not imported by `import tensorflow_datasets`.
    module = name.split("/")[0].removesuffix("_translate")
    try:
        importlib.import_module(f"tensorflow_datasets.translate.{module}")
    except ImportError:
        pass  # Not a translation module of TFDS: tfds.builder says whether the name exists.
    try:
        return tfds.builder(name, data_dir=data_dir or None, file_format="array_record")
    except Exception as e:  # noqa: BLE001  (TFDS raises several types for an unknown name)
        raise DataError(
            f"config.data.tfds_name: TFDS has no dataset {name!r} "
            f"({str(e).splitlines()[0][:200]}); e.g. 'wmt14_translate/de-en'"
        ) from e


def read_tfds(
    name: str, split: str, source_lang: str, target_lang: str, data_dir: str = ""
) -> ParallelText:
    """The sentence pairs of a TFDS translation dataset's `split` (prepared on first use)."""
    builder = _tfds_builder(name, data_dir)
    languages = list(builder.info.features.keys())
    for field, lang in (("data.source_lang", source_lang), ("data.target_lang", target_lang)):
        if lang not in languages:
            raise DataError(f"config.{field}: {name} has the languages {languages}, not {lang!r}")
    try:
        builder.download_and_prepare()
    except Exception as e:  # noqa: BLE001  (download and preparation errors come in many types)
        raise DataError(
            f"config.data.tfds_name: {name} is not prepared in {builder.data_dir} and could not "
            f"be downloaded and prepared ({type(e).__name__}: {str(e).splitlines()[0][:300]}). "
            "Prepare it once where there is a network (reformer.train does it when it starts) "
            "and pass that directory as --config.data.tfds_dir"
        ) from e
    source = builder.as_data_source(split=split)
    # Reads in blocks where the source can (array_record); one at a time otherwise.
    read = getattr(source, "__getitems__", None) or (lambda ids: [source[i] for i in ids])
    sources, targets, skipped = [], [], 0
    for first in range(0, len(source), 4096):
        for i, example in enumerate(read(range(first, min(first + 4096, len(source))))):
            where = f"{name} {split} example {first + i:,}"
            s, t = (
                _text(example[lang], f"{where} ({lang})") for lang in (source_lang, target_lang)
            )
            if s and t:
                sources.append(s)
                targets.append(t)
            else:
                skipped += 1
    return ParallelText(sources, targets, skipped)


def _text(value, where: str) -> str:
    if not isinstance(value, bytes):
        return str(value).strip()
    try:
        return value.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise DataError(
            f"config.data.tfds_name: {where} is not UTF-8 (byte 0x{value[e.start]:02x} at "
            f"byte {e.start + 1:,})"
        ) from None


# ---- From a config (`data.name = "translation"`) ----


def split_files(config, split: str) -> tuple[str, str]:
    """The (source, target) files of `split` ("train", "validation", "test")."""
    d = config.data
    pattern = d[f"{split}_files"]
    if not pattern:
        raise DataError(f"config.data.{split}_files: no files for the {split} split")
    return pattern.replace("{lang}", d.source_lang), pattern.replace("{lang}", d.target_lang)


def split_source(config, split: str) -> str:
    """Where the pairs of `split` come from, in words (for logs and caches)."""
    d = config.data
    if d.tfds_name:
        return f"TFDS {d.tfds_name} ({split}, {d.source_lang}-{d.target_lang})"
    return " and ".join(split_files(config, split))


def read_split(config, split: str) -> ParallelText:
    """The sentence pairs of `split`, from `data.tfds_name` or the split's files."""
    d = config.data
    if d.tfds_name:
        return read_tfds(d.tfds_name, split, d.source_lang, d.target_lang, d.tfds_dir)
    return read_parallel(*split_files(config, split), field=f"data.{split}_files")


def vocab_path(config, workdir: str | None) -> str:
    if config.data.vocab_path:
        return config.data.vocab_path
    if not workdir:
        raise DataError("config.data.vocab_path: none given and no workdir to find it in")
    return storage.join(workdir, VOCAB_FILE)


def vocabulary(config, workdir: str | None, create: bool = False) -> Tokenizer:
    """The shared vocabulary (`data.vocab_path`, or WORKDIR/vocab.model). With `create`, one
    missing is trained on the training files of both languages first (process 0 writes it,
    the others wait for it)."""
    import jax

    from reformer.console import log

    path = vocab_path(config, workdir)
    if create and not storage.isfile(path):
        if jax.process_index() == 0:
            text = read_split(config, "train")
            start = time.time()
            tokenizer = _train_vocabulary(config, text)
            tokenizer.save(path)  # Written whole or not at all (storage.write_bytes).
            log(
                f"Trained a {tokenizer.vocab_size:,}-piece SentencePiece vocabulary on "
                f"{2 * len(text.sources):,} sentences in {time.time() - start:.1f} s: {path}"
            )
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("reformer_vocabulary")
    if not storage.isfile(path):
        raise DataError(
            f"config.data.vocab_path: no vocabulary at {path} (reformer.train makes it from "
            "the training pairs when it starts)"
        )
    try:
        tokenizer = Tokenizer.load(path)
    except ValueError as e:
        raise DataError(
            f"config.data.vocab_path: {path} is {e}; delete it (reformer.train makes the "
            "vocabulary again from the training pairs) or name another"
        ) from None
    if tokenizer.vocab_size != config.model.vocab_size:
        raise DataError(
            f"config.model.vocab_size: {config.model.vocab_size:,}, but the vocabulary {path} "
            f"has {tokenizer.vocab_size:,} pieces"
        )
    return tokenizer


def _train_vocabulary(config, text: ParallelText) -> Tokenizer:
    """The vocabulary of the training pairs; a DataError in one line when there are none or
    SentencePiece cannot make it."""
    field = split_field(config, "train")
    if not text.sources:
        raise DataError(
            f"config.{field}: no sentence pair to make the vocabulary from in "
            f"{split_source(config, 'train')} ({text.skipped_empty:,} with an empty side)"
        )
    try:
        return vocab.train(text.sources + text.targets, config.model.vocab_size)
    except ValueError as e:
        about = "model.vocab_size" if "vocabulary size" in str(e).lower() else field
        raise DataError(f"config.{about}: {e}") from None


def split_field(config, split: str) -> str:
    """The config field that names where `split` comes from."""
    return "data.tfds_name" if config.data.tfds_name else f"data.{split}_files"


_CACHE: dict[tuple, tuple[ParallelText, EncodedPairs]] = {}


def load_split(config, split: str, tokenizer: Tokenizer) -> tuple[ParallelText, EncodedPairs]:
    """The text and encoded pairs of `split`, length-filtered (once per process)."""
    from reformer.console import log

    d = config.data
    source = split_source(config, split)
    key = (source, d.tfds_dir, d.source_len, d.seq_len, tokenizer.model_proto)
    if key not in _CACHE:
        text = read_split(config, split)
        pairs = encode_pairs(tokenizer, text, d.source_len, d.seq_len)
        log(
            f"translation {split}: {len(pairs.sources):,} pairs from {source}; left out "
            f"{text.skipped_empty:,} with an empty side and "
            f"{pairs.too_long:,} longer than data.source_len={d.source_len} / "
            f"data.seq_len={d.seq_len} (end id included)"
        )
        _CACHE[key] = text, pairs
    text, pairs = _CACHE[key]
    if not pairs.sources:  # Refused here, before any training step or evaluation.
        raise DataError(
            f"config.{split_field(config, split)}: no sentence pair to "
            f"{'train' if split == 'train' else 'evaluate'} on in {source}: "
            f"{text.skipped_empty:,} with an empty side, {pairs.too_long:,} longer than "
            f"data.source_len={d.source_len} / data.seq_len={d.seq_len} (end id included)"
        )
    return text, pairs


def train_stream(config, workdir: str | None, row_multiple: int, rows_fn) -> TokenBudgetStream:
    tokenizer = vocabulary(config, workdir, create=True)
    _, pairs = load_split(config, "train", tokenizer)
    return TokenBudgetStream(
        pairs,
        max_len=max(config.data.seq_len, config.data.source_len),
        token_budget=config.data.batch_tokens,
        seed=config.train.seed,
        row_multiple=row_multiple,
        rows_fn=rows_fn,
    )


def eval_batches(
    config, workdir: str | None, row_multiple: int, rows_fn, max_batches: int = 0
) -> list[dict[str, np.ndarray]]:
    """Every pair of `eval.split` once, in length buckets (the first `max_batches`, or all
    with 0): a batch holds `eval.batch_size` rows at the longest length and as many more at a
    shorter one as the same number of positions allows (rounded down to a multiple of
    `row_multiple`); padding rows have weight 0."""
    tokenizer = vocabulary(config, workdir)
    _, pairs = load_split(config, config.eval.split, tokenizer)
    lengths = bucket_lengths(max(config.data.seq_len, config.data.source_len))
    rows = max(row_multiple, config.eval.batch_size // row_multiple * row_multiple)
    buckets = assign_buckets(pairs, lengths)
    batches = epoch_batches(buckets, lengths, rows * max(lengths), row_multiple, None)
    out = []
    for length, indices in batches[: max_batches or None]:
        batch = make_batch(
            pairs, indices, length, bucket_rows(length, rows * max(lengths), row_multiple)
        )
        mine = rows_fn(len(batch["tokens"]))
        out.append({k: v[mine] for k, v in batch.items()})
    return out
