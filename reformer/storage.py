"""Local and Cloud Storage paths: every file the project reads or writes under a workdir, an
init-from workdir or a data path goes through this module.

A path is a local path or `gs://BUCKET/prefix`; both are handled by `etils.epath`, which
orbax and TFDS use too (without TensorFlow it reaches Cloud Storage through gcsfs). Object
storage differs from a disk in ways this module hides:

- No directories: a "directory" exists while an object lies under its prefix. Nothing here
  creates one, and a bucket is never created: a missing bucket is an error.
- No rename: an upload is atomic (a reader sees the old object or the new one), so a file is
  written whole in one upload where a local file is written to a temporary file and renamed
  over; a tree is moved by copying every object and deleting the source only after the copy
  is complete.
- No append: gcsfs turns an append into an overwrite, so appending writers (metrics.jsonl,
  TensorBoard events; see `reformer/training/metrics.py`) rewrite the whole object.
- Listings are cached per process by gcsfs; they are refreshed before each listing here, since
  another host may have written since.

Other schemes (`s3://`, `az://`, ...) and local paths that look like URLs (`gs:/x`) are
refused instead of becoming local directories. Against a storage emulator (tests) the
environment points the clients at it (docs/scaling.md); gcsfs's probe of the bucket type over
gRPC, which an emulator does not serve, is then switched off.
"""

from __future__ import annotations

import os
import re
import shutil

from etils import epath

from reformer.errors import ConfigError

if os.environ.get("STORAGE_EMULATOR_HOST"):  # Read by gcsfs when it is first imported.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

REMOTE = "gs://"
_URL_LIKE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+):/")
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def is_remote(path) -> bool:
    return str(path).startswith(REMOTE)


def problem(path) -> str | None:
    """Why `path` is neither a local path nor `gs://BUCKET/...`, or None when it is one."""
    path = str(path)
    if is_remote(path):
        if not _BUCKET.fullmatch(bucket(path)):
            return (
                f"{path!r} does not name a valid bucket (gs://BUCKET/path, BUCKET of 3-222 "
                "lowercase letters, digits, '-', '_' or '.')"
            )
        return None
    match = _URL_LIKE.match(path)
    if match:
        return (
            f"{path!r} looks like a URL ({match[1]}:/...), which is not supported: give a "
            "local path or gs://BUCKET/path (Cloud Storage)"
        )
    return None


def check(path, field: str) -> str:
    """`path` as a string, or a ConfigError naming `field` (see `problem`)."""
    message = problem(path)
    if message:
        raise ConfigError(f"{field}: {message}")
    return str(path)


def bucket(path) -> str:
    return str(path)[len(REMOTE) :].split("/")[0]


def _fs():
    """The gcsfs instance `epath` uses (one per process), so its caches are the ones dropped."""
    from etils.epath import backend

    return backend.fsspec_backend.fs(REMOTE)


def _fresh(path) -> None:
    """Drops gcsfs's cached listings of `path` (another process may have written since)."""
    if is_remote(path):
        _fs().invalidate_cache(str(path))


def path(p) -> epath.Path:
    """An `epath.Path`: local paths made absolute (orbax wants them so), gs:// as given."""
    return epath.Path(str(p) if is_remote(p) else os.path.abspath(p))


def join(base, *parts: str) -> str:
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return os.path.join(base, *parts)


def exists(p) -> bool:
    _fresh(p)
    return path(p).exists()


def isdir(p) -> bool:
    _fresh(p)
    return path(p).is_dir()


def isfile(p) -> bool:
    _fresh(p)
    return path(p).is_file()


def listdir(p) -> list[str]:
    """The names directly under `p` (empty when there is nothing)."""
    _fresh(p)
    directory = path(p)
    if not directory.is_dir():
        return []
    return sorted(child.name for child in directory.iterdir())


def read_text(p) -> str:
    return path(p).read_text()


def read_bytes(p) -> bytes:
    return path(p).read_bytes()


def write_bytes(p, data: bytes) -> None:
    """Writes `p` whole or not at all (see `write_text`)."""
    if is_remote(p):
        path(p).write_bytes(data)
        return
    tmp = f"{p}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


def write_text(p, text: str) -> None:
    """Writes `p` whole or not at all: one upload on Cloud Storage; locally a temporary file
    synced and renamed over it."""
    write_bytes(p, text.encode())


def prepare_dir(p, field: str, probe_name: str = ".write_test") -> None:
    """Makes sure `p` can be written before any work starts: a local directory is created; on
    Cloud Storage the bucket must exist (it is never created). A probe file is written and
    deleted; a ConfigError naming `field` and `p` says what is wrong."""
    check(p, field)
    probe = join(p, probe_name)
    if is_remote(p):
        try:
            path(probe).write_text("ok")
        except FileNotFoundError as e:
            raise ConfigError(
                f"{field}: {p}: the bucket gs://{bucket(p)} does not exist (or these credentials "
                f"cannot see it). Create it first (gcloud storage buckets create "
                f"gs://{bucket(p)}); nothing was written."
            ) from e
        except Exception as e:  # noqa: BLE001  (gcsfs and google-auth raise many types)
            raise ConfigError(
                f"{field}: {p} cannot be written ({type(e).__name__}: {_first_line(e)})"
            ) from e
        path(probe).unlink(missing_ok=True)
        return
    try:
        os.makedirs(p, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{field}: {p!r} is not writable: {e}") from e


def move_tree(src, dst) -> None:
    """Moves the directory `src` to `dst` (which must not exist). On Cloud Storage every
    object is copied first and the source deleted only once all copies are there."""
    if not is_remote(src):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.move(src, dst)
        return
    fs = _fs()
    fs.invalidate_cache()
    sources = [f for f in fs.find(str(src)) if not f.endswith("/")]
    fs.copy(str(src).rstrip("/") + "/", str(dst).rstrip("/") + "/", recursive=True)
    fs.invalidate_cache()
    copied = [f for f in fs.find(str(dst)) if not f.endswith("/")]
    if len(copied) < len(sources):
        raise OSError(
            f"copying {src} to {dst} gave {len(copied)} of {len(sources)} objects; the "
            "source was kept"
        )
    fs.rm(str(src), recursive=True)
    fs.invalidate_cache()


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""
