"""Image data: pixel order, sources (directory, .tar, downsampled-ImageNet .npz), the decoded
cache, splits, the seeded training stream and its resumption, evaluation batches, bad input."""

from __future__ import annotations

import io
import json
import math
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from reformer.data import image_files, images, make_eval_batches, make_train_stream
from reformer.data.text import DataError
from tests.conftest import REPO, load_config, load_script, read_metrics, run_module

CIFAR_TEST = os.path.join(REPO, "..", "shared", "data", "cifar10_jpeg", "test.tar")
SHAPE = (4, 4, 3)


def random_images(n: int, shape=SHAPE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, "PNG")
    return buffer.getvalue()


def write_image_dir(root, arrays, names=None) -> list[str]:
    """PNG files under class folders; returns their relative names (as written)."""
    names = names or [f"{'ab'[i % 2]}/{i:03d}.png" for i in range(len(arrays))]
    for name, array in zip(names, arrays, strict=True):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(png_bytes(array))
    return names


def in_name_order(names, arrays) -> np.ndarray:
    return np.stack([arrays[i] for i in sorted(range(len(names)), key=names.__getitem__)])


def image_config(tmp_path, train: str, test: str = "", validation: int = 2, shape=SHAPE):
    c = load_config("tiny")
    c.data.name = "images"
    c.data.image_shape = shape
    c.data.seq_len = math.prod(shape)
    c.data.image_train, c.data.image_test = train, test
    c.data.image_validation = validation
    c.data.image_cache = str(tmp_path / "cache")
    c.model.vocab_size = 256
    c.train.batch_size = c.eval.batch_size = 4
    return c


def as_rows(array: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.asarray(array).reshape(len(array), -1)}


@pytest.fixture
def dataset(tmp_path):
    """11 training images (the last 3 in name order for validation) and 6 test images."""
    train, test = random_images(11, seed=1), random_images(6, seed=2)
    train_names = write_image_dir(tmp_path / "train", train)
    test_names = write_image_dir(tmp_path / "test", test)
    config = image_config(tmp_path, str(tmp_path / "train"), str(tmp_path / "test"), 3)
    return config, in_name_order(train_names, train), in_name_order(test_names, test)


def test_a_sequence_is_the_raster_order_with_a_pixels_channels_together():
    image = np.arange(48, dtype=np.uint8).reshape(SHAPE) * 5
    tokens = images.pixels_to_tokens(image[None])[0]
    expected = [image[y, x, c] for y in range(4) for x in range(4) for c in range(3)]
    np.testing.assert_array_equal(tokens, expected)
    assert tokens.dtype == np.int32
    np.testing.assert_array_equal(images.tokens_to_pixels(tokens, SHAPE), image)


def test_an_image_round_trips_to_the_same_png_bytes():
    original = png_bytes(random_images(1, (8, 8, 3))[0])
    decoded = image_files.decode_image(original, (8, 8, 3), False, "x.png")
    tokens = images.pixels_to_tokens(decoded[None])
    assert tokens.shape == (1, 192) and 0 <= tokens.min() and tokens.max() <= 255
    assert png_bytes(images.tokens_to_pixels(tokens, (8, 8, 3))[0]) == original


def test_eval_batches_score_every_image_of_the_split_exactly_once(dataset):
    config, train, test = dataset
    for split, expected in (("test", test), ("validation", train[-3:])):
        config.eval.split = split
        batches = make_eval_batches(config, whole_split=True)
        assert len(batches) == math.ceil(len(expected) / 4)
        tokens = np.concatenate([b["tokens"] for b in batches])
        weights = np.concatenate([b["weights"] for b in batches])
        assert set(np.unique(weights)) <= {0.0, 1.0}
        real = weights.all(axis=1)
        assert not weights[~real].any()  # Padding rows are not scored at all.
        np.testing.assert_array_equal(tokens[real], images.pixels_to_tokens(expected))
        assert tokens.shape[1] == 48 and tokens.dtype == np.int32
        assert weights.dtype == np.float32
    config.eval.split = "test"
    config.eval.num_batches = 1
    assert len(make_eval_batches(config)) == 1  # During training: the first num_batches.
    halves = [make_eval_batches(config, rows=slice(2 * i, 2 * i + 2)) for i in range(2)]
    whole = make_eval_batches(config)[0]["tokens"]
    np.testing.assert_array_equal(np.concatenate([h[0]["tokens"] for h in halves]), whole)


def test_validation_is_the_last_images_in_name_order_and_never_trained_on(tmp_path):
    arrays = random_images(9, seed=3)
    names = ["z.png", "b/2.png", "a.png", "b/10.png", "c.png", "y.png", "m.png", "b/1.png", "d.png"]
    write_image_dir(tmp_path / "train", arrays, names)
    config = image_config(tmp_path, str(tmp_path / "train"), validation=3)
    ordered = in_name_order(names, arrays)  # a, b/1, b/10, b/2, c, d, m, y, z
    np.testing.assert_array_equal(images.split_images(config, "validation"), ordered[-3:])
    np.testing.assert_array_equal(images.split_images(config, "train"), ordered[:-3])
    stream = make_train_stream(config)
    seen = set()
    for _ in range(12):
        seen |= as_rows(next(stream)["tokens"].astype(np.uint8))
    assert seen == as_rows(ordered[:-3])  # Every training image, no validation image.


def test_per_folder_validation_takes_the_last_images_of_every_folder(tmp_path):
    arrays = random_images(9, seed=4)
    names = [f"{c}/{i}.png" for c in ("cat", "dog", "emu") for i in range(3)]
    write_image_dir(tmp_path / "train", arrays, names)
    config = image_config(tmp_path, str(tmp_path / "train"), validation=3)
    config.data.image_validation_per_folder = True
    ordered = in_name_order(names, arrays)  # cat/0..2, dog/0..2, emu/0..2
    validation = images.split_images(config, "validation")
    np.testing.assert_array_equal(validation[np.arange(3)], ordered[[2, 5, 8]])
    train = images.split_images(config, "train")
    np.testing.assert_array_equal(train[np.arange(6)], ordered[[0, 1, 3, 4, 6, 7]])
    seen = set()
    stream = make_train_stream(config)
    for _ in range(8):
        seen |= as_rows(next(stream)["tokens"].astype(np.uint8))
    assert seen == as_rows(ordered[[0, 1, 3, 4, 6, 7]])  # No validation image is trained on.
    config.eval.split = "validation"
    batches = make_eval_batches(config, whole_split=True)
    tokens = np.concatenate([b["tokens"][b["weights"].all(axis=1)] for b in batches])
    np.testing.assert_array_equal(tokens, images.pixels_to_tokens(ordered[[2, 5, 8]]))
    config.data.image_validation = 4  # Not a multiple of the 3 folders.
    with pytest.raises(DataError, match="do not split equally over the 3 folders"):
        images.split_images(config, "validation")


def test_each_epoch_is_a_new_permutation_and_hosts_share_one_global_batch(dataset):
    config, train, _ = dataset  # 8 training images, batches of 4.
    stream = make_train_stream(config)
    batches = [next(stream) for _ in range(6)]  # Three epochs.
    epochs = [np.concatenate([b["tokens"] for b in batches[i : i + 2]]) for i in (0, 2, 4)]
    for epoch in epochs:
        assert as_rows(epoch.astype(np.uint8)) == as_rows(train[:-3])
        assert epoch.shape == (8, 48)
    assert not np.array_equal(epochs[0], epochs[1])
    assert all((b["weights"] == 1).all() for b in batches)
    hosts = [make_train_stream(config, rows=slice(2 * i, 2 * i + 2)) for i in range(2)]
    for batch in batches:
        joined = np.concatenate([next(h)["tokens"] for h in hosts])
        np.testing.assert_array_equal(joined, batch["tokens"])


def test_a_resumed_stream_sees_the_batches_of_an_uninterrupted_one(tmp_path):
    arrays = random_images(10, seed=4)
    write_image_dir(tmp_path / "train", arrays)
    config = image_config(tmp_path, str(tmp_path / "train"), validation=0)
    config.train.batch_size = 3  # Batches that straddle epochs of 10 images.
    straight = make_train_stream(config)
    expected = [next(straight)["tokens"] for _ in range(9)]
    first = make_train_stream(config)
    for _ in range(4):  # Stopped mid-epoch (12 of 20 images of two epochs).
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    resumed = make_train_stream(config)
    resumed.set_state(state)
    for want in expected[4:]:
        np.testing.assert_array_equal(next(resumed)["tokens"], want)
    config.train.seed += 1
    with pytest.raises(ValueError, match="seed"):
        make_train_stream(config).set_state(state)


def test_batch_indices_are_a_pure_function_of_seed_and_index():
    a = images.batch_indices(7, 5, 4, 6)
    np.testing.assert_array_equal(a, images.batch_indices(7, 5, 4, 6))
    positions = np.concatenate([images.batch_indices(7, i, 4, 6) for i in range(3)])
    assert sorted(positions[:6]) == list(range(6)) and sorted(positions[6:]) == list(range(6))


def downsampled_imagenet(path, hwc: np.ndarray, compressed: bool = False) -> None:
    """An .npz in the downsampled-ImageNet layout: `data` uint8 [N, C*H*W] channel-first."""
    data = hwc.transpose(0, 3, 1, 2).reshape(len(hwc), -1)
    labels = np.arange(1, len(hwc) + 1, dtype=np.int64)
    (np.savez_compressed if compressed else np.savez)(path, data=data, labels=labels)


def test_npz_files_are_read_channel_first_in_natural_name_order(tmp_path, monkeypatch):
    parts = {1: random_images(3, seed=5), 2: random_images(2, seed=6), 10: random_images(4, seed=7)}
    for k, hwc in parts.items():
        downsampled_imagenet(tmp_path / f"Imagenet64_train_part{k}.npz", hwc, compressed=k == 2)
    monkeypatch.setattr(image_files, "CHUNK_BYTES", 100)  # Two rows a chunk: rows in pieces.
    decoded = image_files.load(
        str(tmp_path / "Imagenet64_train_part*.npz"), SHAPE, cache=str(tmp_path / "cache")
    )
    np.testing.assert_array_equal(decoded.images, np.concatenate([parts[1], parts[2], parts[10]]))
    assert [f for f, _ in decoded.manifest["files"]] == [
        "Imagenet64_train_part1.npz",
        "Imagenet64_train_part2.npz",
        "Imagenet64_train_part10.npz",
    ]
    assert isinstance(decoded.images, np.memmap)


def test_the_cache_is_reused_without_decoding_and_rebuilt_when_the_source_changes(
    tmp_path, monkeypatch
):
    arrays = random_images(5, seed=8)
    names = write_image_dir(tmp_path / "train", arrays)
    cache = str(tmp_path / "cache")
    first = image_files.load(str(tmp_path / "train"), SHAPE, cache=cache)
    (built,) = os.listdir(cache)
    assert sorted(os.listdir(os.path.join(cache, built))) == ["images.npy", "manifest.json"]
    assert first.manifest["names"] == sorted(names)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(image_files, "decode_image", no_decoding)
    again = image_files.load(str(tmp_path / "train"), SHAPE, cache=cache)
    np.testing.assert_array_equal(again.images, first.images)
    assert again.manifest == first.manifest
    monkeypatch.undo()
    write_image_dir(tmp_path / "train", random_images(1, seed=9), ["a/new.png"])
    changed = image_files.load(str(tmp_path / "train"), SHAPE, cache=cache)
    assert len(changed.images) == 6 and len(os.listdir(cache)) == 2


def test_a_damaged_cache_is_decoded_again(tmp_path):
    write_image_dir(tmp_path / "train", random_images(3, seed=10))
    cache = str(tmp_path / "cache")
    first = np.array(image_files.load(str(tmp_path / "train"), SHAPE, cache=cache).images)
    (built,) = os.listdir(cache)
    with open(os.path.join(cache, built, "images.npy"), "r+b") as f:
        f.truncate(100)
    again = image_files.load(str(tmp_path / "train"), SHAPE, cache=cache)
    np.testing.assert_array_equal(again.images, first)


def test_a_tar_gives_the_images_of_the_same_directory(tmp_path):
    arrays = random_images(5, seed=11)
    write_image_dir(tmp_path / "train", arrays)
    with tarfile.open(tmp_path / "train.tar", "w") as tar:
        for name in ["b/003.png", "a/000.png", "a/004.png", "b/001.png", "a/002.png"]:
            tar.add(tmp_path / "train" / name, arcname=f"train/{name}")
    cache = str(tmp_path / "cache")
    from_dir = image_files.load(str(tmp_path / "train"), SHAPE, cache=cache)
    from_tar = image_files.load(str(tmp_path / "train.tar"), SHAPE, cache=cache)
    np.testing.assert_array_equal(from_tar.images, from_dir.images)
    assert from_tar.manifest["names"] == ["train/" + n for n in from_dir.manifest["names"]]


def test_grayscale_in_a_colour_config_is_converted_and_said_once(tmp_path, capsys):
    gray = random_images(3, (4, 4, 1), seed=12)
    write_image_dir(tmp_path / "train", [*gray, *random_images(2, seed=13)])
    decoded = image_files.load(str(tmp_path / "train"), SHAPE, cache=str(tmp_path / "cache"))
    np.testing.assert_array_equal(decoded.images[0], np.repeat(gray[0], 3, axis=-1))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "converted" in ln]
    assert len(lines) == 1 and "3 image(s) grayscale converted to RGB" in lines[0]


def test_another_size_is_resized_only_when_asked(tmp_path):
    write_image_dir(tmp_path / "train", [random_images(1, (8, 6, 3))[0]], ["big.png"])
    decoded = image_files.load(
        str(tmp_path / "train"), SHAPE, resize=True, cache=str(tmp_path / "cache")
    )
    assert decoded.images.shape == (1, 4, 4, 3)


def _not_an_image(root):
    os.makedirs(root / "a")
    write_image_dir(root, random_images(2), ["a/0.png", "a/1.png"])
    (root / "a" / "2.png").write_text("not pixels")
    return str(root), "a/2.png: not a JPEG or PNG image"


def _truncated_jpeg(root):
    os.makedirs(root)
    buffer = io.BytesIO()
    Image.fromarray(random_images(1, (32, 32, 3))[0]).save(buffer, "JPEG", quality=90)
    (root / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return str(root), "cut.jpg: cannot be decoded"


def _other_size(root):
    write_image_dir(root, [random_images(1, (8, 8, 3))[0]], ["x.png"])
    return str(root), "x.png: an image of 8x8 pixels, not the 4x4 of data.image_shape"


def _npz_without_data(root):
    os.makedirs(root)
    np.savez(root / "part1.npz", pixels=np.zeros((2, 48), np.uint8), labels=np.zeros(2))
    return str(root / "part*.npz"), "part1.npz: no 'data' array"


def _npz_rows_of_another_length(root):
    os.makedirs(root)
    downsampled_imagenet(root / "part1.npz", random_images(2))
    downsampled_imagenet(root / "part2.npz", random_images(2, (8, 8, 3)))
    return str(root / "part*.npz"), "part2.npz: rows of 192 values, but data.image_shape"


def _not_an_npz(root):
    os.makedirs(root)
    (root / "part1.npz").write_bytes(b"PK\x03\x04 not really a zip")
    return str(root / "part1.npz"), "part1.npz: not a readable .npz file"


def _empty_directory(root):
    os.makedirs(root / "class")
    (root / ".hidden").write_text("x")
    return str(root), "holds no image files"


def _empty_glob(root):
    os.makedirs(root)
    return str(root / "Imagenet64_*.npz"), "no .npz file matches"


def _empty_tar(root):
    os.makedirs(root)
    tarfile.open(root / "empty.tar", "w").close()
    return str(root / "empty.tar"), "empty.tar holds no image files"


def _not_a_tar(root):
    os.makedirs(root)
    (root / "images.tar").write_bytes(b"\x00garbage" * 10)
    return str(root / "images.tar"), "images.tar is not a .tar archive"


def _bad_member_in_tar(root):
    os.makedirs(root)
    with tarfile.open(root / "train.tar", "w") as tar:
        info = tarfile.TarInfo("train/cat/7.jpg")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    return str(root / "train.tar"), "train.tar member train/cat/7.jpg: not a JPEG or PNG image"


def _truncated_tar(root):
    os.makedirs(root)
    write_image_dir(root / "files", random_images(3, (8, 8, 3)), ["0.png", "1.png", "2.png"])
    with tarfile.open(root / "train.tar", "w") as tar:
        tar.add(root / "files", arcname="train")
    whole = (root / "train.tar").read_bytes()
    (root / "train.tar").write_bytes(whole[: len(whole) // 2])
    return str(root / "train.tar"), "train.tar"


BAD_INPUTS = [
    _not_an_image,
    _truncated_jpeg,
    _other_size,
    _npz_without_data,
    _npz_rows_of_another_length,
    _not_an_npz,
    _empty_directory,
    _empty_glob,
    _empty_tar,
    _not_a_tar,
    _bad_member_in_tar,
    _truncated_tar,
]


@pytest.mark.parametrize("make", BAD_INPUTS, ids=[f.__name__[1:] for f in BAD_INPUTS])
def test_bad_input_is_one_line_naming_the_file_and_leaves_no_cache(make, tmp_path):
    source, message = make(tmp_path / "src")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as raised:
        image_files.load(source, SHAPE, cache=str(cache))
    text = str(raised.value)
    assert message in text and "\n" not in text
    assert not cache.exists() or os.listdir(cache) == []  # Nothing half written.


def test_a_bad_image_stops_the_command_with_one_line(tmp_path):
    source, _ = _not_an_image(tmp_path / "src")
    cache = tmp_path / "cache"
    result = run_module(
        [
            "reformer.train",
            "--config",
            "configs/tiny.py",
            "--workdir",
            str(tmp_path / "work"),
            "--config.data.name=images",
            "--config.data.image_shape=(4, 4, 3)",
            "--config.data.seq_len=48",
            "--config.model.vocab_size=256",
            f"--config.data.image_train={source}",
            "--config.data.image_validation=1",
            f"--config.data.image_cache={cache}",
        ],
        timeout=120,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert "a/2.png: not a JPEG or PNG image" in line
    assert os.listdir(cache) == []


def test_more_validation_images_than_training_images_is_an_error(dataset):
    config, _, _ = dataset
    config.data.image_validation = 11
    with pytest.raises(DataError, match="image_validation: 11 validation images leave none"):
        make_train_stream(config)


def test_sixteen_cifar10_jpegs_of_the_shared_test_tar():
    if not os.path.isfile(CIFAR_TEST):
        pytest.skip(f"{CIFAR_TEST} is not here (see ../shared/data/PROVENANCE.md)")
    names, pixels = image_files.read_tar_images(CIFAR_TEST, 16, (32, 32, 3))
    assert names == [f"test/airplane/{i:04d}.jpg" for i in range(16)]
    assert pixels.shape == (16, 32, 32, 3) and pixels.dtype == np.uint8
    assert 20 < pixels.std() < 120  # Real photographs, not a constant or noise.
    tokens = images.pixels_to_tokens(pixels)
    assert tokens.shape == (16, 3072)
    np.testing.assert_array_equal(images.tokens_to_pixels(tokens, (32, 32, 3)), pixels)


def test_a_tiny_model_trains_on_images_end_to_end(dataset, tmp_path):
    from reformer.train import train_and_evaluate

    config, _, _ = dataset
    config.train.num_steps = 4
    config.train.eval_every = config.train.checkpoint_every = 4
    config.train.log_every = 2
    config.optimizer.warmup_steps = 2
    config.eval.num_batches = 1
    result = train_and_evaluate(config, str(tmp_path / "work"))
    assert np.isfinite(result["loss"])
    assert result["loss"] < 1.2 * math.log(256)  # Per sub-pixel, about uniform at the start.
    evals = read_metrics(str(tmp_path / "work"), "eval")
    assert [r["step"] for r in evals] == [4]


def test_bits_per_dim_over_every_test_image_and_a_picture_of_completions(dataset, tmp_path):
    """A trained tiny model: `evaluate_checkpoint` reports bits per sub-pixel over every
    test image, and `reformer.sample` writes one PNG grid: samples, held-out images, and
    below each its completion, whose top half is the given one."""
    from reformer.evaluation.checkpoint import evaluate_checkpoint
    from reformer.train import train_and_evaluate

    config, _, test = dataset
    workdir = str(tmp_path / "work")
    config.train.num_steps = config.train.checkpoint_every = 2
    config.train.eval_every, config.eval.num_batches = 0, 1
    train_and_evaluate(config, workdir)
    config.eval.split = "test"
    record = evaluate_checkpoint(config, workdir)
    assert (record["images"], record["sub_pixels"]) == (6, 6 * 48) == (6, record["tokens"])
    assert record["bits_per_dim"] == pytest.approx(record["loss"] / math.log(2))
    with open(os.path.join(workdir, "eval_test.json")) as f:
        assert json.load(f)["bits_per_dim"] == record["bits_per_dim"]

    d = config.data
    out = str(tmp_path / "grid.png")
    flags = [
        "--config.data.name=images", "--config.data.image_shape=(4, 4, 3)",
        "--config.data.seq_len=48", f"--config.data.image_train={d.image_train}",
        f"--config.data.image_test={d.image_test}", "--config.data.image_validation=3",
        f"--config.data.image_cache={d.image_cache}", "--config.model.vocab_size=256",
        "--config.train.batch_size=4", "--config.eval.batch_size=4",
    ]  # fmt: skip
    result = run_module(
        ["reformer.sample", "--config=configs/tiny.py", f"--workdir={workdir}", *flags,
         "--num_samples=2", "--temperature=0.9", f"--out={out}"]
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    grid = np.asarray(Image.open(out).convert("RGB"))
    assert grid.shape == (2 + 3 * 18, 2 + 2 * 18, 3)  # 3 rows, 2 columns of 16 px + 2 px gaps

    def cell(row, col):  # One image of the grid, back at its size (4x enlarged).
        top, left = 2 + row * 18, 2 + col * 18
        return grid[top : top + 16 : 4, left : left + 16 : 4]

    for col, image in enumerate(test[[0, 5]]):  # Spread over the split: the first and last.
        np.testing.assert_array_equal(cell(1, col), image)  # The held-out images.
        np.testing.assert_array_equal(cell(2, col)[:2], image[:2])  # Their given top half.

    results = load_script("cifar10_results")  # The results table reads the same record.
    run = results.run_record("tiny", workdir)
    assert (run["bits_per_dim"], run["images"], run["step"]) == (record["bits_per_dim"], 6, 2)
    assert len(run["validation_curve"]) == 1  # The evaluation at the last step.
    baselines = [{"baseline": "png_no_header", "bits_per_dim": 5.0, "images": 6}]
    assert f"| {run['bits_per_dim'] - 5.0:+.3f} |" in results.table([run], baselines)


def test_the_compressor_baselines_of_scripts_image_baselines():
    script = load_script("image_baselines")
    images_ = random_images(3, shape=(8, 8, 3), seed=5)
    flat = np.zeros((3, 8, 8, 3), np.uint8)  # Compresses to almost nothing.
    png = png_bytes(images_[0])
    assert 0 < script.idat_bytes(png) < len(png) - 8 - 25 - 12  # Less signature, IHDR, IEND.
    noisy, smooth = script.baselines(images_), script.baselines(flat)
    assert noisy["png"] > noisy["png_no_header"] > 7  # Random bytes do not compress.
    assert smooth["png_no_header"] < 1 and smooth["xz"] < noisy["xz"]
    file_bits, data_bits = script.png_bits(images_)
    assert noisy["png"] == pytest.approx(file_bits / images_.size)
