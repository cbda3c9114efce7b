"""Image sources decoded once into a local cache of fixed-size uint8 rows.

A source is a directory or a `.tar` of JPEG/PNG files (class folders allowed; every file
that is not hidden must be one), ordered by their path name, or a glob of downsampled-
ImageNet `.npz` files (`Imagenet64_train_part1.npz`, ...: a `data` array of uint8 rows of
C*H*W values stored channel-first, and `labels`), ordered by name with numbers compared as
numbers (part2 before part10) and rows in file order.

The cache holds one directory per source under `data.image_cache`
(`~/.cache/reformer/images` by default), named by a digest of the source path, the name,
size and mtime of what it reads, the image shape and `data.image_resize`:

    images.npy     uint8 [N, H, W, C], the images in order (read memory-mapped)
    manifest.json  {"key", "source", "kind", "image_shape", "count", "names" or "files", ...}

Why `.npy` and not array_record (as the enwik8 builder uses): every image is a row of the
same size, so one memory-mapped array gives random access to any batch of rows with no index,
no record framing and no copy, and numpy writes it in place while decoding.

A cache is built in a hidden `.NAME.partial-*` directory next to its final place and renamed
into place only once the array and the manifest are complete and synced: a failure removes
it, a crash leaves a partial directory that is never read, and a restart finds the same
rows in the same order without decoding again.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import tarfile
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from reformer import storage
from reformer.console import log
from reformer.data.text import DataError

CACHE_VERSION = 1
DEFAULT_CACHE = "~/.cache/reformer/images"
FORMATS = ("JPEG", "PNG")
GLOB_CHARS = "*?["
# 8-bit modes Pillow converts between; others (16-bit, float) are refused.
MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
GRAY_MODES = ("1", "L", "LA")
CHANNEL_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
CHUNK_BYTES = 64 << 20  # .npz rows are converted this many bytes at a time.


@dataclass(frozen=True)
class Decoded:
    """A source's images (`[N, H, W, C]` uint8, memory-mapped) and its manifest."""

    images: np.ndarray
    manifest: dict


def natural_key(name: str) -> list:
    """Sort key comparing runs of digits as numbers: part2 before part10."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def _brief(e: BaseException) -> str:
    """An exception as `Type: its first line` (at most 200 characters)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:200]}" if lines else type(e).__name__


def _hidden(relative: str) -> bool:
    return any(part.startswith(".") for part in relative.split("/"))


def _stat(path: str) -> list:
    """[size, mtime] of a file (mtime in nanoseconds locally, seconds on Cloud Storage)."""
    if not storage.is_remote(path):
        info = os.stat(path)
        return [info.st_size, info.st_mtime_ns]
    info = storage.path(path).stat()
    return [int(info.length), int(info.mtime)]


def _glob(pattern: str) -> list[str]:
    """The files matching `pattern` (wildcards in any component after a fixed prefix)."""
    parts = pattern.split("/")
    fixed = next(i for i, p in enumerate(parts) if any(c in p for c in GLOB_CHARS))
    base = "/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else ".")
    rest = "/".join(parts[fixed:])
    if not storage.isdir(base):
        return []
    return [str(p) for p in storage.path(base).glob(rest) if p.is_file()]


def _files_under(source: str) -> list[str]:
    """The relative names of the files under a directory, hidden ones left out."""
    root, names = storage.path(source), []
    for directory, subdirectories, files in root.walk():
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".")]
        relative = directory.relative_to(root).as_posix()
        prefix = "" if relative == "." else relative + "/"
        names += [prefix + f for f in files if not f.startswith(".")]
    return names


def _listing(source: str, field: str) -> tuple[str, list]:
    """(kind, what identifies the source's content): "dir" with every file's relative name,
    size and mtime; "tar" with the archive's size and mtime; "npz" with each file's."""
    if any(c in source for c in GLOB_CHARS) or source.endswith(".npz"):
        files = sorted(_glob(source) if any(c in source for c in GLOB_CHARS) else [source])
        files = [f for f in files if storage.isfile(f)]
        if not files:
            raise DataError(f"config.{field}: no .npz file matches {source}")
        files.sort(key=lambda f: natural_key(os.path.basename(f)))
        return "npz", [[f, *_stat(f)] for f in files]
    if storage.isdir(source):
        names = _files_under(source)
        if not names:
            raise DataError(f"config.{field}: {source} holds no image files")
        return "dir", [[n, *_stat(storage.join(source, n))] for n in sorted(names)]
    if storage.isfile(source):
        return "tar", [_stat(source)]
    raise DataError(f"config.{field}: no such file or directory: {source}")


def _absolute(source: str) -> str:
    return source if storage.is_remote(source) else os.path.abspath(os.path.expanduser(source))


def _cache_root(cache: str) -> str:
    root = os.path.expanduser(cache or DEFAULT_CACHE)
    try:
        os.makedirs(root, exist_ok=True)
    except OSError as e:
        raise DataError(f"config.data.image_cache: {root} cannot be created: {e}") from e
    return root


def _cache_name(source: str, key: str) -> str:
    stem = re.sub(r"[^a-zA-Z0-9]+", "_", os.path.basename(source.rstrip("/"))).strip("_")
    return f"{stem.lower() or 'images'}_{key[:16]}"


def load(
    source: str,
    shape: tuple[int, int, int],
    *,
    resize: bool = False,
    cache: str = "",
    field: str = "data.image_train",
) -> Decoded:
    """The images of `source`, decoded into the cache on first use and memory-mapped."""
    shape = tuple(int(a) for a in shape)
    if shape[2] not in CHANNEL_MODES:
        raise DataError(f"config.data.image_shape: images have 1, 3 or 4 channels, got {shape}")
    source = _absolute(source)
    kind, listing = _listing(source, field)
    identity = {
        "version": CACHE_VERSION,
        "source": source,
        "kind": kind,
        "listing": listing,
        "image_shape": list(shape),
        "resize": bool(resize) and kind != "npz",
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    final = os.path.join(_cache_root(cache), _cache_name(source, key))
    decoded = _read_cache(final, key, shape)
    if decoded is not None:
        log(f"images: {decoded.manifest['count']:,} decoded images of {source} from {final}")
        return decoded
    start = time.time()
    log(f"images: decoding {source} into {final} (once)")
    header = {"key": key, "version": CACHE_VERSION, "source": source, "kind": kind}
    try:
        manifest = _build(
            final, header, lambda tmp: _fill(tmp, kind, source, listing, shape, resize, field)
        )
    except DataError as e:  # Every message names the config field.
        if str(e).startswith("config."):
            raise
        raise DataError(f"config.{field}: {e}") from None
    log(f"images: {manifest['count']:,} images of {shape} in {time.time() - start:.1f} s")
    decoded = _read_cache(final, key, shape)
    if decoded is None:
        raise DataError(f"config.data.image_cache: {final} could not be read back after writing")
    return decoded


def _fill(tmp, kind, source, listing, shape, resize, field) -> dict:
    if kind == "npz":
        return _fill_from_npz(tmp, [row[0] for row in listing], shape, field)
    if kind == "dir":
        names = [row[0] for row in listing]
        return _fill_from_files(tmp, _dir_members(source, names), names, shape, resize, source)
    return _fill_from_tar(tmp, source, shape, resize, field)


def _read_cache(final: str, key: str, shape: tuple) -> Decoded | None:
    """The cache at `final` when it is complete and of `key`; None when there is none. A
    damaged one is moved aside (and removed) so that it is rebuilt."""
    manifest_path = os.path.join(final, "manifest.json")
    if not os.path.isfile(manifest_path):
        return None
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
        images = np.load(os.path.join(final, "images.npy"), mmap_mode="r")
        if manifest.get("key") != key or images.shape != (manifest["count"], *shape):
            raise ValueError(f"holds {images.shape}, not what its manifest says")
        if images.dtype != np.uint8:
            raise ValueError(f"holds {images.dtype}, not uint8")
    except (OSError, ValueError, KeyError, TypeError) as e:
        log(f"images: the cache {final} is damaged ({e}); decoding again")
        _discard(final)
        return None
    return Decoded(images, manifest)


def _discard(directory: str) -> None:
    aside = tempfile.mkdtemp(
        prefix=f".{os.path.basename(directory)}.stale-", dir=os.path.dirname(directory)
    )
    try:
        os.replace(directory, os.path.join(aside, "old"))
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _build(final: str, header: dict, fill) -> dict:
    """Runs `fill(tmp)` (writes tmp/images.npy, returns the rest of the manifest) in a
    partial directory, writes the manifest (`header` first) and renames the directory to
    `final`; the partial directory is removed whatever happens."""
    root, name = os.path.dirname(final), os.path.basename(final)
    tmp = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=root)
    try:
        manifest = {**header, **fill(tmp)}
        _sync(os.path.join(tmp, "images.npy"))
        with open(os.path.join(tmp, "manifest.json"), "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.rename(tmp, final)
        except OSError:
            if not os.path.isfile(os.path.join(final, "manifest.json")):
                raise
            # Another process finished the same cache first: use theirs.
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def _sync(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _allocate(tmp: str, count: int, shape: tuple) -> np.ndarray:
    return np.lib.format.open_memmap(
        os.path.join(tmp, "images.npy"), mode="w+", dtype=np.uint8, shape=(count, *shape)
    )


# --- JPEG / PNG files ------------------------------------------------------------------


class _Notes:
    """What was done to some images (converted, resized): one log line per source."""

    def __init__(self):
        self.counts = collections.Counter()
        self.first = {}

    def add(self, what: str, where: str) -> None:
        self.counts[what] += 1
        self.first.setdefault(what, where)

    def log(self, source: str) -> None:
        for what, n in sorted(self.counts.items()):
            log(f"images: {source}: {n:,} image(s) {what} (the first: {self.first[what]})")


def decode_image(data: bytes, shape: tuple, resize: bool, where: str, notes=None) -> np.ndarray:
    """One JPEG or PNG file's bytes -> uint8 `[H, W, C]` of `shape`. A grayscale image in a
    colour shape is converted (noted in `notes`); one of another size is refused unless
    `resize`. Any other problem is a DataError naming `where`."""
    h, w, c = shape
    try:
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            image.load()  # Decodes now: a truncated file fails here.
            image = _converted(image, c, where, notes)
            if image.size != (w, h):
                if not resize:
                    raise DataError(
                        f"{where}: an image of {image.height}x{image.width} pixels, not the "
                        f"{h}x{w} of data.image_shape (set data.image_resize=True to resize)"
                    )
                image = image.resize((w, h), Image.Resampling.LANCZOS)
                if notes is not None:
                    notes.add(f"resized to {h}x{w}", where)
            array = np.asarray(image, np.uint8)
    except DataError:
        raise
    except Image.UnidentifiedImageError:
        raise DataError(f"{where}: not a JPEG or PNG image") from None
    except Exception as e:  # noqa: BLE001  (Pillow's decoders raise many types)
        raise DataError(f"{where}: cannot be decoded ({_brief(e)})") from None
    return array.reshape(h, w, c)


def _converted(image: Image.Image, channels: int, where: str, notes) -> Image.Image:
    mode, target = image.mode, CHANNEL_MODES[channels]
    if mode == target:
        return image
    if mode not in MODES:
        raise DataError(f"{where}: pixels of mode {mode} (not 8 bits a channel) are not supported")
    if channels == 1 and mode not in GRAY_MODES:
        raise DataError(f"{where}: a colour image ({mode}), but data.image_shape has 1 channel")
    if notes is not None and mode in GRAY_MODES and channels > 1:
        notes.add(f"grayscale converted to {target}", where)
    elif notes is not None and mode in ("LA", "PA", "RGBA") and "A" not in target:
        notes.add(f"converted to {target}, transparency dropped", where)
    return image.convert(target)


def _dir_members(source: str, names: list[str]):
    """(row, where, bytes) of each file of a directory, in name order."""
    for row, name in enumerate(names):
        where = storage.join(source, name)
        yield row, where, storage.read_bytes(where)


def _fill_from_files(tmp, members, names, shape, resize, source) -> dict:
    """Decodes (row, where, bytes) items into the array of `len(names)` rows."""
    out, notes = _allocate(tmp, len(names), shape), _Notes()
    last_log = time.time()
    for done, (row, where, data) in enumerate(members, 1):
        out[row] = decode_image(data, shape, resize, where, notes)
        if time.time() - last_log > 30:
            log(f"images: {done:,} of {len(names):,} decoded")
            last_log = time.time()
    out.flush()
    del out
    notes.log(source)
    return {"image_shape": list(shape), "count": len(names), "names": names}


def _open_tar(f, source: str, field: str) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=f, mode="r:*")
    except (tarfile.TarError, EOFError, OSError):
        raise DataError(
            f"config.{field}: {source} is not a .tar archive; give a directory, a .tar of "
            "JPEG/PNG files or a glob of .npz files"
        ) from None


def _fill_from_tar(tmp: str, source: str, shape, resize, field) -> dict:
    try:
        with storage.path(source).open("rb") as f, _open_tar(f, source, field) as tar:
            members = {m.name: m for m in tar.getmembers() if m.isfile() and not _hidden(m.name)}
            names = sorted(members)
            if not names:
                raise DataError(f"config.{field}: {source} holds no image files")
            row_of = {name: row for row, name in enumerate(names)}
            in_archive_order = sorted(members.values(), key=lambda m: m.offset_data)

            def read():
                for m in in_archive_order:
                    where = f"{source} member {m.name}"
                    yield row_of[m.name], where, _tar_bytes(tar, m, where)

            return _fill_from_files(tmp, read(), names, shape, resize, source)
    except (tarfile.TarError, EOFError) as e:
        raise DataError(f"config.{field}: {source}: a damaged .tar ({_brief(e)})") from None


def _tar_bytes(tar: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> bytes:
    data = tar.extractfile(member).read()
    if len(data) != member.size:
        raise DataError(f"{where}: the archive ends inside this file (truncated .tar)")
    return data


def read_tar_images(source: str, count: int, shape: tuple, resize: bool = False) -> tuple:
    """(names, uint8 `[count, H, W, C]`): the first `count` images of a `.tar` in name order,
    decoded as the cache decodes them (no cache written)."""
    with storage.path(source).open("rb") as f, _open_tar(f, source, "data.image_train") as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile() and not _hidden(m.name)}
        names = sorted(members)[:count]
        images = [
            decode_image(_tar_bytes(tar, members[n], n), shape, resize, f"{source} member {n}")
            for n in names
        ]
    return names, np.stack(images)


# --- downsampled-ImageNet .npz ----------------------------------------------------------


NPZ_ERRORS = (zipfile.BadZipFile, EOFError, OSError, ValueError, zlib.error)


@contextlib.contextmanager
def _npz_rows(path: str, shape: tuple):
    """(row count, the open `data` member positioned at its first row) of one `.npz` file,
    after checking its dtype and shape; a damaged file is a DataError naming it."""
    with contextlib.ExitStack() as stack:
        try:
            f = stack.enter_context(storage.path(path).open("rb"))
            archive = stack.enter_context(zipfile.ZipFile(f))
            if "data.npy" not in archive.namelist():
                arrays = ", ".join(n.removesuffix(".npy") for n in archive.namelist())
                raise DataError(
                    f"{path}: no 'data' array (it has: {arrays or 'none'}); a downsampled-"
                    "ImageNet .npz has 'data' and 'labels'"
                )
            member = stack.enter_context(archive.open("data.npy"))
            count = _npz_header(member, path, shape)
        except NPZ_ERRORS as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{path}: not a readable .npz file ({_brief(e)})") from None
        yield count, member


def _read_rows(member, size: int, path: str) -> bytes:
    try:
        raw = member.read(size)
    except NPZ_ERRORS as e:
        raise DataError(f"{path}: 'data' cannot be read ({_brief(e)})") from None
    if len(raw) != size:
        raise DataError(f"{path}: 'data' ends early (truncated file)")
    return raw


def _npz_header(member, path: str, shape: tuple) -> int:
    version = np.lib.format.read_magic(member)
    read = np.lib.format.read_array_header_1_0
    if version != (1, 0):
        read = np.lib.format.read_array_header_2_0
    rows_shape, fortran, dtype = read(member)
    length = math.prod(shape)
    if dtype != np.uint8 or len(rows_shape) != 2 or fortran:
        raise DataError(
            f"{path}: 'data' is {dtype} {rows_shape}{' in Fortran order' if fortran else ''}, "
            "not uint8 rows [N, C*H*W] (downsampled-ImageNet)"
        )
    if rows_shape[1] != length:
        raise DataError(
            f"{path}: rows of {rows_shape[1]:,} values, but data.image_shape {shape} needs "
            f"{length:,} (C*H*W, channel-first)"
        )
    return int(rows_shape[0])


def _fill_from_npz(tmp: str, files: list[str], shape: tuple, field: str) -> dict:
    """Converts the files' channel-first rows to `[H, W, C]`, a chunk at a time, straight
    into the memory-mapped array (one chunk of one file in memory at a time)."""
    h, w, c = shape
    counts = []
    for path in files:  # Every file is checked before anything is converted.
        with _npz_rows(path, shape) as (count, _):
            counts.append(count)
    total = sum(counts)
    if not total:
        raise DataError(f"config.{field}: the .npz files ({files[0]}, ...) hold no images")
    out, row, length = _allocate(tmp, total, shape), 0, h * w * c
    chunk = max(1, CHUNK_BYTES // length)
    for path in files:
        with _npz_rows(path, shape) as (count, member):
            for start in range(0, count, chunk):
                n = min(chunk, count - start)
                raw = _read_rows(member, n * length, path)
                planes = np.frombuffer(raw, np.uint8).reshape(n, c, h, w)
                out[row : row + n] = planes.transpose(0, 2, 3, 1)
                row += n
        log(f"images: {os.path.basename(path)}: {count:,} images converted")
    out.flush()
    del out
    names = [[os.path.basename(p), n] for p, n in zip(files, counts, strict=True)]
    return {"image_shape": list(shape), "count": total, "files": names}
