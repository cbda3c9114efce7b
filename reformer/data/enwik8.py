"""enwik8 as a TFDS dataset written to `array_record` (no TensorFlow).

enwik8 is the first 10^8 bytes of an English Wikipedia XML dump (Hutter prize). The builder
reads the official `enwik8.zip` (downloaded when there is a network) or a local file
(`config.data.path`, zip or raw), checks it, splits it 90% / 5% / 5% in order (the standard
90M / 5M / 5M for the full file) and writes each split as records of up to 64 KiB of bytes
with their offset. `load_splits` reads them back as one contiguous byte array per split.

The full file must have 100,000,000 bytes and sha1 57b8363b814821dc9d47aa4d41f58733519076b2;
a shorter local file is accepted as a prefix of enwik8 (e.g. `../shared/data/`'s 4.15 MB) if
it starts like the dump, and the same proportions are used.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np

from reformer.config.schema import SPLITS
from reformer.console import log
from reformer.data import text

URL = "http://mattmahoney.net/dc/enwik8.zip"
SIZE = 100_000_000
SHA1 = "57b8363b814821dc9d47aa4d41f58733519076b2"
HEADER = b"<mediawiki "
RECORD_BYTES = 1 << 16
VERSION = "1.0.0"


def check_enwik8(data: bytes, source: str) -> str:
    """Raises DataError unless `data` is enwik8 or a prefix of it; returns a description."""
    digest = text.sha1(data)
    if len(data) == SIZE:
        if digest != SHA1:
            raise text.DataError(
                f"config.data.path: {source} has the size of enwik8 ({SIZE:,} bytes) but sha1 "
                f"{digest}, not {SHA1}: the file is corrupted or is not enwik8"
            )
        return f"the full enwik8 ({SIZE:,} bytes, sha1 {digest}) from {source}"
    if len(data) > SIZE:
        raise text.DataError(
            f"config.data.path: {source} has {len(data):,} bytes, more than enwik8's {SIZE:,}; "
            "for other text use --config.data.name=text"
        )
    if not data.startswith(HEADER):
        raise text.DataError(
            f"config.data.path: {source} does not start like enwik8 ({HEADER!r}...); for other "
            "text use --config.data.name=text"
        )
    return (
        f"a {len(data):,}-byte prefix of enwik8 (sha1 {digest}) from {source}; the standard "
        "90M/5M/5M split needs the full file, so its first 90% / next 5% / last 5% are used"
    )


@functools.cache
def _builder_class():
    import tensorflow_datasets as tfds  # Imported here: only enwik8 needs TFDS.

    class Enwik8(tfds.core.GeneratorBasedBuilder):
        """enwik8 bytes in records of up to 64 KiB; splits train / validation / test."""

        VERSION = tfds.core.Version(VERSION)

        def __init__(self, *, source_path: str = "", **kwargs):
            self._source_path = source_path
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description="enwik8: the first 10^8 bytes of an English Wikipedia XML dump.",
                features=tfds.features.FeaturesDict(
                    {
                        "bytes": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
                        "offset": tfds.features.Scalar(dtype=np.int64),
                    }
                ),
                homepage="http://mattmahoney.net/dc/textdata.html",
                disable_shuffling=True,
            )

        def _split_generators(self, dl_manager):
            if self._source_path:
                path = self._source_path
            else:
                try:
                    path = os.fspath(dl_manager.download(URL))
                except Exception as e:  # noqa: BLE001  (network errors come in many types)
                    raise text.DataError(
                        f"config.data.path: none given and {URL} could not be downloaded "
                        f"({type(e).__name__}: {e}); download it elsewhere and pass "
                        "--config.data.path=/path/to/enwik8.zip"
                    ) from e
            data = text.read_file(path)
            log(f"enwik8: preparing {check_enwik8(data, path)}")
            return {
                name: self._generate_examples(array)
                for name, array in text.split_bytes(data).items()
            }

        def _generate_examples(self, array):
            for offset in range(0, len(array), RECORD_BYTES):
                yield offset, {"bytes": array[offset : offset + RECORD_BYTES], "offset": offset}

    return Enwik8


def _config_name(path: str, data: bytes | None) -> str:
    """One prepared dataset per source file: "full" or the file's name and sha1 prefix."""
    if not path:
        return "full"
    stem = re.sub(r"[^a-zA-Z0-9]+", "_", os.path.basename(path)).strip("_").lower()
    return f"{stem or 'file'}_{text.sha1(data)[:12]}"


def load_splits(path: str = "", data_dir: str = "") -> dict[str, np.ndarray]:
    """Prepares (once) and reads enwik8 from `path` (or the official download).

    Returns each split as one uint8 array. The prepared records live under `data_dir`
    (default: TFDS's, `~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
    """
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    data = None
    if path:
        data = text.read_file(path)
        source = check_enwik8(data, path)  # Fail before any work on a wrong or damaged file.
    else:
        source = f"the official {URL}"
    name = _config_name(path, data)
    builder = _builder_class()(
        source_path=path,
        config=tfds.core.BuilderConfig(name=name, version=VERSION),
        data_dir=data_dir or None,
        file_format="array_record",
    )
    builder.download_and_prepare()
    log(f"enwik8: {source}. Prepared records: {builder.data_dir}")
    splits = {}
    for split in SPLITS:
        records = builder.as_data_source(split=split)
        records = sorted((records[i] for i in range(len(records))), key=lambda r: r["offset"])
        splits[split] = (
            np.concatenate([r["bytes"] for r in records]) if records else np.zeros(0, np.uint8)
        )
    if data is not None:  # The prepared records must give back the file's bytes.
        bounds = text.split_bounds(len(data))
        for split, (a, b) in bounds.items():
            if len(splits[split]) != b - a:
                raise text.DataError(
                    f"enwik8 records in {builder.data_dir} hold {len(splits[split]):,} "
                    f"{split} bytes, expected {b - a:,}; delete that directory to rebuild"
                )
    return splits
