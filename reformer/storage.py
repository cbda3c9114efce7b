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

Every call on a `gs://` path runs under `storage_faults.call`: the endpoint is checked once
per process (an unreachable one is a one-line ConfigError at once), transient failures are
retried with backoff for at most `train.storage_timeout`, and a watchdog ends a process
whose storage stops answering with one line (`reformer/storage_faults.py`). gcsfs requests
time out when no byte moves for a minute, and TensorStore's (orbax's checkpoint arrays) too,
unless the environment sets its own `TENSORSTORE_CURL_*` values.

`create_new`, `read_versioned`, `replace_if` and `delete_if` change an object only if nobody
changed it since it was read (the workdir lock): on Cloud Storage with generation
preconditions (`ifGenerationMatch`, 0 for "does not exist"); locally by an exclusive create
(`O_EXCL`) and, for replacing and deleting, a comparison of the content under an exclusive
`flock` of the directory, which every one of these operations takes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import shutil

from etils import epath

from reformer import storage_faults
from reformer.errors import ConfigError

if os.environ.get("STORAGE_EMULATOR_HOST"):  # Read by gcsfs when it is first imported.
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# TensorStore reads these when it first makes a request: a request that moves no byte for a
# minute (or does not connect in 30 s) fails and is retried by TensorStore.
os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_LIMIT_BYTES", "1")
os.environ.setdefault("TENSORSTORE_CURL_LOW_SPEED_TIME_SECONDS", "60")
os.environ.setdefault("TENSORSTORE_CURL_CONNECT_TIMEOUT_SECONDS", "30")
STALL_SECONDS = 60  # gcsfs: a request that moves no byte for this long fails

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
    """The gcsfs instance `epath` uses (one per process), so its caches are the ones dropped;
    its requests time out when stalled (`STALL_SECONDS`)."""
    from etils.epath import backend

    fs = backend.fsspec_backend.fs(REMOTE)
    if getattr(fs, "requests_timeout", 0) is None:
        import aiohttp

        fs.requests_timeout = aiohttp.ClientTimeout(
            sock_connect=STALL_SECONDS / 2, sock_read=STALL_SECONDS
        )
    return fs


def _io(what: str):
    """Runs the decorated function of a `gs://` path (its first argument) under
    `storage_faults.call`: deadline, retries, the watchdog; local paths as they are."""

    def decorate(fn):
        @functools.wraps(fn)
        def run(p, *args, **kwargs):
            if not is_remote(p):
                return fn(p, *args, **kwargs)
            _fs()
            return storage_faults.call(what, str(p), bucket(p), lambda: fn(p, *args, **kwargs))

        return run

    return decorate


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


@_io("looking up")
def exists(p) -> bool:
    _fresh(p)
    return path(p).exists()


@_io("looking up")
def isdir(p) -> bool:
    _fresh(p)
    return path(p).is_dir()


@_io("looking up")
def isfile(p) -> bool:
    _fresh(p)
    return path(p).is_file()


@_io("listing")
def listdir(p) -> list[str]:
    """The names directly under `p` (empty when there is nothing)."""
    _fresh(p)
    directory = path(p)
    if not directory.is_dir():
        return []
    return sorted(child.name for child in directory.iterdir())


@_io("reading")
def read_text(p) -> str:
    return path(p).read_text()


@_io("reading")
def read_bytes(p) -> bytes:
    return path(p).read_bytes()


@_io("writing")
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
        storage_faults.check_reachable(bucket(p), f"{field}: {p}")
        try:
            write_bytes(probe, b"ok")
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
        _unlink(probe)
        return
    try:
        os.makedirs(p, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ConfigError(f"{field}: {p!r} is not writable: {e}") from e


@_io("deleting")
def _unlink(p) -> None:
    path(p).unlink(missing_ok=True)


@_io("moving")
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


# Conditional changes (the workdir lock). A version is an object's generation on Cloud
# Storage, a digest of the content locally.


def _object(p) -> tuple[str, str]:
    """(bucket, object name) of a `gs://` path."""
    name = str(p)[len(REMOTE) :].split("/", 1)
    return name[0], name[1] if len(name) > 1 else ""


def _upload_if(p, data: bytes, generation: str) -> str | None:
    """Uploads `p` if its generation is `generation` ("0": absent); the new generation, or
    None when the precondition failed (HTTP 412)."""
    fs = _fs()
    base = fs.base  # https://HOST/storage/v1/
    upload = base[: -len("storage/v1/")] + "upload/storage/v1/b/{}/o"
    name = _object(p)
    try:
        out = fs.call(
            "POST", upload, name[0], uploadType="media", name=name[1],
            ifGenerationMatch=generation, data=data, json_out=True,
            headers={"Content-Type": "application/octet-stream"},
        )  # fmt: skip
    except FileExistsError:  # gcsfs's name for 412 Precondition Failed
        return None
    fs.invalidate_cache(str(p))
    return str(out["generation"])


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@contextlib.contextmanager
def _directory_locked(p):
    """An exclusive `flock` of the directory of the local path `p` (released on exit, and by
    the kernel when the process dies). Where the filesystem cannot lock a directory (some
    network filesystems), the exclusive create and the comparison stand alone."""
    fd = os.open(os.path.dirname(os.path.abspath(p)) or ".", os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_local(p) -> tuple[bytes, str] | None:
    try:
        with open(p, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return data, _digest(data)


@_io("creating")
def create_new(p, data: bytes) -> str | None:
    """Writes `p` only if it does not exist; its version, or None when it exists."""
    if is_remote(p):
        return _upload_if(p, data, "0")
    with _directory_locked(p):
        try:
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return _digest(data)


@_io("reading")
def read_versioned(p) -> tuple[bytes, str] | None:
    """`(content, version)` of `p`, or None when it does not exist."""
    if not is_remote(p):
        with _directory_locked(p):
            return _read_local(p)
    try:
        headers, data = _fs().call("GET", "b/{}/o/{}", *_object(p), alt="media")
    except FileNotFoundError:
        return None
    return data, str(headers["x-goog-generation"])


@_io("replacing")
def replace_if(p, data: bytes, version: str) -> str | None:
    """Replaces `p` with `data` if it is still at `version`; the new version, or None when
    it changed or is gone."""
    if is_remote(p):
        return _upload_if(p, data, version)
    with _directory_locked(p):
        current = _read_local(p)
        if current is None or current[1] != version:
            return None
        write_bytes(p, data)
    return _digest(data)


@_io("deleting")
def delete_if(p, version: str) -> bool:
    """Deletes `p` if it is still at `version`; whether it did."""
    if is_remote(p):
        try:
            _fs().call("DELETE", "b/{}/o/{}", *_object(p), ifGenerationMatch=version)
        except (FileExistsError, FileNotFoundError):
            return False
        _fs().invalidate_cache(str(p))
        return True
    with _directory_locked(p):
        current = _read_local(p)
        if current is None or current[1] != version:
            return False
        os.remove(p)
    return True


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:200] if text else ""
