"""Byte-level data: the enwik8 TFDS builder, splits, grain crops, evaluation windows."""

import io
import os
import zipfile

import numpy as np
import pytest

from reformer.config import ConfigError
from reformer.config.schema import SPLITS
from reformer.data import enwik8, make_eval_batches, make_train_stream, text
from tests.conftest import REPO, load_config

SHARED = os.path.join(REPO, "..", "shared", "data")
PREFIX = os.path.join(SHARED, "enwik8_prefix_4154399")
SHAKESPEARE = os.path.join(SHARED, "tinyshakespeare_input.txt")


def fake_enwik8(n_bytes: int, seed: int = 0) -> bytes:
    """Bytes that start like the enwik8 dump, then random (all 256 values occur)."""
    rng = np.random.default_rng(seed)
    body = rng.integers(0, 256, n_bytes - len(enwik8.HEADER), dtype=np.uint8).tobytes()
    return enwik8.HEADER + body


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "enwik8_small"
    data = fake_enwik8(200_003)
    path.write_bytes(data)
    return str(path), data


@pytest.fixture(scope="module")
def prepared(small_file, tmp_path_factory):
    path, data = small_file
    return enwik8.load_splits(path, str(tmp_path_factory.mktemp("tfds"))), data


def test_ids_round_trip_to_bytes():
    data = bytes(range(256)) * 3
    ids = text.bytes_to_ids(data)
    assert ids.dtype == np.int32 and ids.min() == 2 and ids.max() == 257
    assert text.ids_to_bytes(ids) == data
    assert text.ids_to_bytes(np.concatenate([ids, [0, 1, 0]])) == data  # pad / end dropped


def test_split_bounds_are_the_standard_split_for_enwik8_and_90_5_5_otherwise():
    assert text.split_bounds(100_000_000) == {
        "train": (0, 90_000_000),
        "validation": (90_000_000, 95_000_000),
        "test": (95_000_000, 100_000_000),
    }
    b = text.split_bounds(1001)
    assert b["train"] == (0, 900) and b["validation"] == (900, 950) and b["test"] == (950, 1001)


def test_builder_writes_array_record_and_reads_back_exact_splits(prepared, tmp_path):
    splits, data = prepared
    bounds = text.split_bounds(len(data))
    for name, (a, b) in bounds.items():
        assert len(splits[name]) == b - a
        assert splits[name].tobytes() == data[a:b]
    assert sum(len(s) for s in splits.values()) == len(data)


def test_builder_files_are_array_record(small_file, tmp_path):
    path, _ = small_file
    enwik8.load_splits(path, str(tmp_path))
    written = [f for _, _, files in os.walk(tmp_path) for f in files]
    assert any(".array_record-" in f and "train" in f for f in written), written


def test_zip_source_gives_the_same_splits(small_file, prepared, tmp_path):
    path, data = small_file
    zipped = tmp_path / "enwik8.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("enwik8", data)
    splits = enwik8.load_splits(str(zipped), str(tmp_path / "tfds"))
    for name in SPLITS:
        np.testing.assert_array_equal(splits[name], prepared[0][name])


def test_truncated_or_wrong_files_are_clear_errors(small_file, tmp_path):
    path, data = small_file
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("enwik8", data)
    broken = tmp_path / "broken.zip"
    broken.write_bytes(zipped.getvalue()[: len(zipped.getvalue()) // 2])
    with pytest.raises(ConfigError, match="config.data.path: .*damaged or truncated zip"):
        enwik8.load_splits(str(broken), str(tmp_path))
    with pytest.raises(ConfigError, match="does not start like enwik8.*data.name=text"):
        enwik8.load_splits(SHAKESPEARE, str(tmp_path))
    with pytest.raises(ConfigError, match="no such file"):
        enwik8.load_splits(str(tmp_path / "missing"), str(tmp_path))
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(ConfigError, match="is empty"):
        text.read_file(str(empty))


def test_full_size_file_must_have_enwik8s_sha1():
    wrong = fake_enwik8(enwik8.SIZE)
    with pytest.raises(ConfigError, match="sha1 .* not 57b8363b"):
        enwik8.check_enwik8(wrong, "enwik8")
    with pytest.raises(ConfigError, match="more than enwik8"):
        enwik8.check_enwik8(wrong + b"x", "enwik8")
    assert "prefix" in enwik8.check_enwik8(wrong[:1000], "p")


def crop_stream(data, **kwargs):
    args = dict(seq_len=32, seed=3, batch_size=4)
    args.update(kwargs)
    return text.CropStream(data, **args)


def test_crops_are_seeded_slices_of_the_split(prepared):
    train = prepared[0]["train"]
    a = [next(crop_stream(train))["tokens"] for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])  # Same seed, same batches.
    stream = crop_stream(train)
    batches = [next(stream) for _ in range(3)]
    assert not np.array_equal(batches[0]["tokens"], batches[1]["tokens"])
    assert not np.array_equal(batches[0]["tokens"], next(crop_stream(train, seed=4))["tokens"])
    haystack = train.tobytes()
    for row in batches[0]["tokens"]:
        assert text.ids_to_bytes(row) in haystack
    assert batches[0]["tokens"].shape == (4, 32) and batches[0]["weights"].min() == 1.0


def test_restored_iterator_continues_exactly(prepared):
    train = prepared[0]["train"]
    straight = crop_stream(train)
    expected = [next(straight)["tokens"] for _ in range(7)]
    first = crop_stream(train)
    for _ in range(4):
        next(first)
    state = first.get_state()
    resumed = crop_stream(train)
    resumed.set_state(state)
    for want in expected[4:]:
        np.testing.assert_array_equal(next(resumed)["tokens"], want)
    with pytest.raises(ValueError, match="seed"):
        crop_stream(train, seed=9).set_state(state)


def test_hosts_take_their_rows_of_one_global_batch(prepared):
    train = prepared[0]["train"]
    whole = next(crop_stream(train))["tokens"]
    parts = [next(crop_stream(train, rows=slice(2 * i, 2 * i + 2)))["tokens"] for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


@pytest.mark.parametrize("n,seq_len,stride", [(100, 16, 0), (96, 16, 0), (100, 16, 5), (10, 16, 4)])
def test_eval_windows_score_every_byte_exactly_once(n, seq_len, stride):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8)
    w = text.eval_windows(data, seq_len, stride)
    scored = w["tokens"][w["weights"] > 0]
    # Windows are in order, so the scored ids read back the split, each byte once.
    assert text.ids_to_bytes(scored) == data.tobytes()
    assert w["weights"].sum() == n
    if stride:  # Sliding windows: every scored byte after the first window has context.
        for k in range(1, len(w["tokens"])):
            first = int(np.argmax(w["weights"][k] > 0))
            assert first >= seq_len - stride
    else:  # Padding (id 0) exactly where nothing is scored.
        assert ((w["tokens"] == 0) == (w["weights"] == 0)).all()


def test_eval_batches_pad_with_unscored_rows_and_split_over_hosts():
    data = np.arange(100, dtype=np.uint8)
    w = text.eval_windows(data, 16)  # 7 windows
    batches = text.eval_batches(w, batch_size=4)
    assert len(batches) == 2 and batches[1]["weights"][3].sum() == 0
    assert sum(b["weights"].sum() for b in batches) == 100
    halves = [text.eval_batches(w, 4, rows=slice(2 * i, 2 * i + 2)) for i in range(2)]
    np.testing.assert_array_equal(
        np.concatenate([halves[0][1]["tokens"], halves[1][1]["tokens"]]), batches[1]["tokens"]
    )
    assert len(text.eval_batches(w, batch_size=4, num_batches=1)) == 1


def test_text_dataset_from_config_reads_any_local_file():
    config = load_config("tiny")
    config.data.name, config.data.path = "text", SHAKESPEARE
    config.model.vocab_size = 258
    batch = next(make_train_stream(config))
    assert batch["tokens"].shape == (config.train.batch_size, config.data.seq_len)
    with open(SHAKESPEARE, "rb") as f:
        data = f.read()
    assert text.ids_to_bytes(batch["tokens"][0]) in data[: len(data) * 9 // 10]
    config.eval.split = "test"
    batches = make_eval_batches(config, whole_split=True)
    assert sum(b["weights"].sum() for b in batches) == len(data) - len(data) * 95 // 100


def test_builder_prepares_the_shared_enwik8_prefix(tmp_path):
    splits = enwik8.load_splits(PREFIX, str(tmp_path))
    with open(PREFIX, "rb") as f:
        data = f.read()
    assert [len(splits[s]) for s in SPLITS] == [3_738_959, 207_720, 207_720]
    assert b"".join(splits[s].tobytes() for s in SPLITS) == data
