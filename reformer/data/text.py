"""Byte-level text: splits, training crops through a seeded grain pipeline, and evaluation
windows that cover a split exactly once.

Token ids follow the google/reformer-enwik8 convention: id = byte + 2 (0 = padding,
1 = end), so the vocabulary has 258 entries. A file is split in order into train /
validation / test by 90% / 5% / 5% of its bytes; for the full enwik8 (10^8 bytes) that is the
standard 90M / 5M / 5M split.
"""

from __future__ import annotations

import hashlib
import io
import math
import zipfile

import grain
import numpy as np

from reformer import storage
from reformer.errors import ConfigError
from reformer.tokens import END_ID

ID_OFFSET = END_ID + 1  # id = byte + 2, after padding (0) and end (1).
VOCAB_SIZE = 256 + ID_OFFSET


class DataError(ConfigError):
    """A data file that cannot be used (missing, truncated, not the expected file)."""


def bytes_to_ids(data: bytes | np.ndarray) -> np.ndarray:
    """Bytes (or a uint8 array of any shape) -> int32 token ids (byte + 2)."""
    array = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else np.asarray(data)
    return array.astype(np.int32) + ID_OFFSET


def ids_to_bytes(ids: np.ndarray) -> bytes:
    """Token ids -> bytes; padding and end ids (0, 1) are dropped."""
    ids = np.asarray(ids)
    ids = ids[ids >= ID_OFFSET]
    if ids.size and ids.max() >= VOCAB_SIZE:
        raise ValueError(f"id {int(ids.max())} is not a byte id (ids are 2..{VOCAB_SIZE - 1})")
    return (ids - ID_OFFSET).astype(np.uint8).tobytes()


def read_file(path: str, field: str = "data.path") -> bytes:
    """The bytes of a raw file, or of the single member of a zip archive."""
    if not path:
        raise DataError(f"config.{field}: no file given")
    problem = storage.problem(path)
    if problem:
        raise DataError(f"config.{field}: {problem}")
    if not storage.isfile(path):
        raise DataError(f"config.{field}: no such file: {path}")
    raw = storage.read_bytes(path)
    if raw[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(io.BytesIO(raw)) as z:
                members = [m for m in z.infolist() if not m.is_dir()]
                if len(members) != 1:
                    raise DataError(
                        f"config.{field}: {path} is a zip with {len(members)} files; "
                        "expected exactly one"
                    )
                raw = z.read(members[0])
        except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
            raise DataError(f"config.{field}: {path} is a damaged or truncated zip: {e}") from e
    if not raw:
        raise DataError(f"config.{field}: {path} is empty")
    return raw


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def split_bounds(n_bytes: int) -> dict[str, tuple[int, int]]:
    """[start, end) of each split: the first 90% train, next 5% validation, last 5% test."""
    train_end = n_bytes * 90 // 100
    valid_end = n_bytes * 95 // 100
    return {
        "train": (0, train_end),
        "validation": (train_end, valid_end),
        "test": (valid_end, n_bytes),
    }


def split_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Each split of `data` as a uint8 array (views, no copies)."""
    array = np.frombuffer(data, np.uint8)
    return {name: array[a:b] for name, (a, b) in split_bounds(len(array)).items()}


def _crop_batch(
    step: int,
    *,
    data: np.ndarray,
    seq_len: int,
    seed: int,
    global_batch: int,
    rows: slice,
) -> dict[str, np.ndarray]:
    """This host's rows of global batch `step`: uniformly random crops of `seq_len` bytes."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(data) - seq_len + 1, size=global_batch)[rows]
    tokens = bytes_to_ids(np.stack([data[s : s + seq_len] for s in starts]))
    return {"tokens": tokens, "weights": np.ones(tokens.shape, np.float32)}


class CropStream:
    """Endless training batches of random crops, as a seeded `grain` pipeline.

    Batch `step` is a pure function of (seed, step): every host draws the same global batch
    and keeps its own rows, so the data does not depend on the number of hosts. The grain
    iterator's state (the next step) goes into checkpoints via `get_state` / `set_state`.
    """

    def __init__(
        self,
        data: np.ndarray,
        *,
        seq_len: int,
        seed: int,
        batch_size: int,
        rows: slice | None = None,
        name: str = "train",
    ):
        """`rows`: this host's rows of each global batch (None: all of them)."""
        if len(data) < seq_len:
            raise DataError(
                f"config.data.seq_len: the {name} split has {len(data):,} bytes, fewer than "
                f"one sequence of {seq_len}"
            )
        self._seed, self._seq_len = seed, seq_len
        rows = rows if rows is not None else slice(0, batch_size)
        self._dataset = grain.MapDataset.range(2**62).map(
            lambda step: _crop_batch(
                step, data=data, seq_len=seq_len, seed=seed, global_batch=batch_size, rows=rows
            )
        )
        self._iterator = iter(
            self._dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4))
        )

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._iterator)

    def get_state(self) -> dict:
        return {"seed": self._seed, "seq_len": self._seq_len, "grain": self._iterator.get_state()}

    def set_state(self, state: dict) -> None:
        if "grain" not in state:
            raise ValueError(f"not the state of a byte-text stream: {state}")
        mine = {"seed": self._seed, "seq_len": self._seq_len}
        saved = {k: state.get(k) for k in mine}
        if saved != mine:
            raise ValueError(f"the saved stream has {saved}, this run has {mine}")
        self._iterator.set_state(state["grain"])


def eval_windows(data: np.ndarray, seq_len: int, stride: int = 0) -> dict[str, np.ndarray]:
    """Windows over a split that score every byte exactly once.

    `stride=0` (or `seq_len`): contiguous, non-overlapping windows; the last one is padded
    (id 0, weight 0). `0 < stride < seq_len`: window k starts at k * stride and scores only
    the bytes not scored before (the first window all of them, later ones their last
    `stride`), so every scored byte after the first window has at least `seq_len - stride`
    bytes of context.
    """
    n = len(data)
    stride = stride or seq_len
    if not 0 < stride <= seq_len:
        raise ValueError(f"config.eval.stride: must be in 0..seq_len={seq_len}, got {stride}")
    if stride == seq_len:
        starts = list(range(0, n, seq_len))  # The last window is padded.
    elif n <= seq_len:
        starts = [0]
    else:  # The last window ends at the last byte.
        starts = list(range(0, n - seq_len, stride)) + [n - seq_len]
    ids = np.zeros((len(starts), seq_len), np.int32)
    weights = np.zeros((len(starts), seq_len), np.float32)
    scored_to = 0  # Bytes [0, scored_to) are scored.
    for k, s in enumerate(starts):
        window = data[s : s + seq_len]
        ids[k, : len(window)] = bytes_to_ids(window)
        first_new = max(scored_to, s) - s
        weights[k, first_new : len(window)] = 1.0
        scored_to = s + len(window)
    return {"tokens": ids, "weights": weights}


def eval_batches(
    windows: dict[str, np.ndarray],
    batch_size: int,
    num_batches: int = 0,
    rows: slice | None = None,
) -> list[dict[str, np.ndarray]]:
    """Windows grouped into global batches of `batch_size` (the last padded with rows of
    weight 0), this host's rows of each (`rows`; None: all of them); the first
    `num_batches` (0 = all)."""
    n = len(windows["tokens"])
    total = math.ceil(n / batch_size)
    if num_batches:
        total = min(total, num_batches)
    rows = rows if rows is not None else slice(0, batch_size)
    out = []
    for b in range(total):
        batch = {}
        for key, array in windows.items():
            part = array[b * batch_size : (b + 1) * batch_size]
            pad = batch_size - len(part)
            if pad:
                part = np.concatenate([part, np.zeros((pad, *part.shape[1:]), part.dtype)])
            batch[key] = part[rows]
        out.append(batch)
    return out
