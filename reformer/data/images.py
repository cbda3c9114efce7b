"""Images as sequences of sub-pixels: the splits, the training stream and evaluation batches.

A sequence is one image's sub-pixels in raster order with the channels of a pixel next to
each other (`image.reshape(-1)` of an `[H, W, C]` uint8 array, as tensor2tensor's
`image_imagenet64_gen_flat`), one token per value 0..255: `tokens` int32 `[B, H*W*C]`,
`weights` float32, all ones for an image (every sub-pixel scored, none taken for padding);
only the rows that pad the last evaluation batch have weight 0.

Splits (`config.data`): `train` is `image_train` without its last `image_validation` images
in name order, `validation` those last images (never trained on), `test` is `image_test`.
The decoded images come from the cache of `image_files` (decoded once, memory-mapped).

The training stream visits the training images in a seeded order, epoch after epoch, a new
permutation each epoch: batch `index` is a pure function of (seed, index), every host builds
the same global batch and keeps its rows, and the stream's position is one integer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import ml_collections
import numpy as np

from reformer.data import image_files
from reformer.data.text import DataError


def pixels_to_tokens(images: np.ndarray) -> np.ndarray:
    """uint8 `[N, H, W, C]` -> int32 `[N, H*W*C]`: raster order, channels of a pixel together."""
    images = np.asarray(images)
    return images.reshape(len(images), -1).astype(np.int32)


def tokens_to_pixels(tokens: np.ndarray, shape: tuple) -> np.ndarray:
    """int `[N, H*W*C]` (or `[H*W*C]`) -> uint8 `[N, H, W, C]` (or `[H, W, C]`)."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() > 255):
        raise ValueError(f"sub-pixel values are 0..255, got {tokens.min()}..{tokens.max()}")
    return tokens.astype(np.uint8).reshape(*tokens.shape[:-1], *shape)


def _shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    return tuple(int(a) for a in config.data.image_shape)


def _load(config: ml_collections.ConfigDict, field: str) -> image_files.Decoded:
    d = config.data
    return image_files.load(
        d[field], _shape(config), resize=d.image_resize, cache=d.image_cache, field=f"data.{field}"
    )


def _source(config: ml_collections.ConfigDict, field: str) -> np.ndarray:
    return _load(config, field).images


class Rows:
    """Rows `indices` of an image array (memory-mapped), read only when indexed."""

    def __init__(self, images: np.ndarray, indices: np.ndarray):
        self.images, self.indices = images, np.asarray(indices)
        self.shape = (len(self.indices), *images.shape[1:])

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        return self.images[self.indices[i]]


def _per_folder_split(decoded: image_files.Decoded, held: int, field: str):
    """(train rows, validation rows): the last `held / folders` images of every folder."""
    names = decoded.manifest.get("names")
    if not names:
        raise DataError(f"config.{field}: data.image_validation_per_folder needs image files")
    folders = np.array([os.path.dirname(n) for n in names])
    groups = [np.flatnonzero(folders == f) for f in dict.fromkeys(folders)]
    if held % len(groups):
        raise DataError(
            f"config.data.image_validation: {held:,} validation images do not split equally "
            f"over the {len(groups)} folders of {decoded.manifest['source']}"
        )
    share = held // len(groups)
    if any(len(g) <= share for g in groups):
        raise DataError(f"config.data.image_validation: a folder has no more than {share} images")
    validation = np.concatenate([g[-share:] for g in groups])
    train = np.concatenate([g[:-share] for g in groups])
    return Rows(decoded.images, train), Rows(decoded.images, validation)


def split_images(config: ml_collections.ConfigDict, split: str) -> np.ndarray | Rows:
    """The images of `split` (uint8 `[N, H, W, C]`, memory-mapped), in their order."""
    d = config.data
    if split == "test":
        if not d.image_test:
            raise DataError("config.data.image_test: no test images given")
        return _source(config, "image_test")
    if split not in ("train", "validation"):
        raise ValueError(f"unknown split {split!r}")
    decoded = _load(config, "image_train")
    everything = decoded.images
    n, held = len(everything), int(d.image_validation)
    if held >= n:
        raise DataError(
            f"config.data.image_validation: {held:,} validation images leave none to train on "
            f"({d.image_train} has {n:,})"
        )
    if held and d.image_validation_per_folder:
        train, validation = _per_folder_split(decoded, held, "data.image_train")
        return train if split == "train" else validation
    return everything[: n - held] if split == "train" else everything[n - held :]


def epoch_order(seed: int, epoch: int, count: int) -> np.ndarray:
    """The order in which epoch `epoch` visits `count` images."""
    return np.random.default_rng([seed, epoch]).permutation(count)


def batch_indices(seed: int, index: int, batch_size: int, count: int, order=epoch_order):
    """The images (indices into the training split) of global batch `index`: positions
    `index * batch_size ...` of the endless sequence of epochs."""
    position = np.arange(index * batch_size, (index + 1) * batch_size, dtype=np.int64)
    epochs, within = np.divmod(position, count)
    picked = np.empty(batch_size, np.int64)
    for epoch in np.unique(epochs):
        here = epochs == epoch
        picked[here] = order(seed, int(epoch), count)[within[here]]
    return picked


def image_batch(images: np.ndarray, indices: np.ndarray) -> dict[str, np.ndarray]:
    """`tokens` and `weights` (all ones) of the images at `indices`."""
    tokens = pixels_to_tokens(images[np.asarray(indices)])
    return {"tokens": tokens, "weights": np.ones(tokens.shape, np.float32)}


class ImageStream:
    """Endless training batches of images in a seeded order, a new permutation each epoch.

    Every host computes the same global batch and keeps its rows (`rows`), so the data does
    not depend on the number of hosts; `get_state` / `set_state` carry the position.
    """

    def __init__(
        self, images: np.ndarray, *, seed: int, batch_size: int, rows: slice | None = None
    ):
        if not len(images):
            raise DataError("config.data.image_train: no training images")
        self._images, self.seed, self.batch_size = images, seed, batch_size
        self._rows = rows if rows is not None else slice(0, batch_size)
        self._orders: dict[int, np.ndarray] = {}
        self.index = 0

    def _order(self, seed: int, epoch: int, count: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = epoch_order(seed, epoch, count)
        return self._orders[epoch]

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        count = len(self._images)
        indices = batch_indices(self.seed, self.index, self.batch_size, count, self._order)
        self.index += 1
        return image_batch(self._images, indices[self._rows])

    def get_state(self) -> dict:
        return {
            "name": "images",
            "seed": self.seed,
            "images": len(self._images),
            "index": self.index,
        }

    def set_state(self, state: dict) -> None:
        mine = {"name": "images", "seed": self.seed, "images": len(self._images)}
        saved = {k: state.get(k) for k in mine}
        if saved != mine:
            raise ValueError(f"the saved image stream has {saved}, this run has {mine}")
        self.index = int(state["index"])


class EvalBatches(Sequence):
    """Global batches of `batch_size` images covering `images` once, in order (the last
    padded with rows of weight 0), this host's `rows` of each, built when read; the first
    `num_batches` (0 = all)."""

    def __init__(
        self, images: np.ndarray, batch_size: int, num_batches: int = 0, rows: slice | None = None
    ):
        self._images, self._batch_size = images, batch_size
        total = math.ceil(len(images) / batch_size)
        self._total = min(total, num_batches) if num_batches else total
        self._rows = rows if rows is not None else slice(0, batch_size)

    def __len__(self) -> int:
        return self._total

    def __getitem__(self, b):
        if isinstance(b, slice):
            return [self[i] for i in range(*b.indices(self._total))]
        b = b + self._total if b < 0 else b
        if not 0 <= b < self._total:
            raise IndexError(f"batch {b} of {self._total}")
        size = self._batch_size
        wanted = np.arange(b * size, (b + 1) * size)[self._rows]
        real = wanted < len(self._images)
        length = math.prod(self._images.shape[1:])
        tokens = np.zeros((len(wanted), length), np.int32)
        tokens[real] = pixels_to_tokens(self._images[wanted[real]])
        return {"tokens": tokens, "weights": np.repeat(real[:, None], length, 1).astype(np.float32)}


def train_stream(config: ml_collections.ConfigDict, rows: slice) -> ImageStream:
    return ImageStream(
        split_images(config, "train"),
        seed=config.train.seed,
        batch_size=config.train.batch_size,
        rows=rows,
    )


def eval_batches(config: ml_collections.ConfigDict, rows: slice, num_batches: int) -> EvalBatches:
    e = config.eval
    images = split_images(config, e.split)
    if not len(images):
        raise DataError(f"config.eval.split: the {e.split} split has no images")
    return EvalBatches(images, e.batch_size, num_batches, rows)
