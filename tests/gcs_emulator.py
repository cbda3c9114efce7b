"""A local Google Cloud Storage emulator for tests that honours generation preconditions.

Built on the pure-Python `gcp_storage_emulator` package, which ignores `ifGenerationMatch` and
friends: every conditional write succeeds. TensorStore (and so orbax's OCDBT checkpoints) relies
on them: it writes with `ifGenerationMatch=0` ("only if absent") or `=<generation>` and reads with
`ifGenerationNotMatch`, and treats 412 / 304 as "someone else won" / "unchanged". So this module
wraps the package's object handlers (it copies none of their code) to answer as real GCS does:

- uploads (media, multipart, resumable: the condition is in the query string of the first
  request, which resumable uploads carry on to their `upload_id` URL), patch, delete, and the
  destination of copy / rewrite / compose: 412 Precondition Failed when `if[Meta]generation[Not]
  Match` does not hold (a missing object has generation 0);
- object GET / download: 412 for `if[Meta]generationMatch`, 304 Not Modified for
  `if[Meta]generationNotMatch`, and `x-goog-generation` / `x-goog-metageneration` headers on
  media downloads, from which TensorStore takes the generation of a (ranged) read;
- listing: `startOffset` / `endOffset`, which TensorStore sends to list or delete a key range;
- empty media uploads (TensorStore writes empty values), on which the package fails.

The server handles one request at a time, so checking a precondition and writing is atomic.

    python tests/gcs_emulator.py --port 9023 --bucket test-bucket   # prints "ready"

`running()` starts that in a subprocess on a free port (`Emulator.pause()` / `resume()` stop and
restart its answers, as an unreachable endpoint); `ENV_VARS(url)` is what a client process needs
to use it (and never reach the real Google Cloud).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from http import HTTPStatus
from http.server import HTTPServer

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import buckets, objects
from gcp_storage_emulator.storage import Storage


def ENV_VARS(url: str) -> dict[str, str]:
    """The environment a client process needs to use the emulator at `url`."""
    return {
        # google-cloud-storage (endpoint, anonymous credentials) and gcsfs (endpoint).
        "STORAGE_EMULATOR_HOST": url,
        # TensorStore's `gcs` kvstore: endpoint, and a fixed token instead of looking for
        # credentials (ADC files, then the GCE metadata server).
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
        # gcsfs: anonymous (fsspec applies FSSPEC_<PROTOCOL>_<KWARG> to its constructor), so it
        # neither looks for credentials nor probes the GCE metadata server.
        "FSSPEC_GCS_TOKEN": "anon",
        # gcsfs otherwise asks the Storage Control gRPC API for the bucket type, which the
        # emulator does not serve (and gives up only after 60 s of retries).
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
    }


def _object(request, storage):
    return request.params["bucket_name"], request.params["object_id"]


def _destination(request, storage):
    return request.params["dest_bucket_name"], request.params["dest_object_id"]


def _upload(request, storage):
    """The object an upload request writes: from its resumable session, query or metadata."""
    if "upload_id" in request.query:
        upload = storage.resumable.get(request.query["upload_id"][0], {})
        return upload.get("bucket"), upload.get("name")
    if "name" in request.query:
        return request.params["bucket_name"], request.query["name"][0]
    data = request.data if isinstance(request.data, dict) else {}
    return request.params["bucket_name"], data.get("meta", data).get("name")


def _failed_precondition(query, obj, read: bool) -> HTTPStatus | None:
    for field in ("generation", "metageneration"):
        current = str(obj[field]) if obj else "0"
        param = "if" + field[0].upper() + field[1:]
        if param + "Match" in query and query[param + "Match"][0] != current:
            return HTTPStatus.PRECONDITION_FAILED
        # A read of a missing object stays a 404 (left to the handler).
        if param + "NotMatch" in query and query[param + "NotMatch"][0] == current:
            if not read:
                return HTTPStatus.PRECONDITION_FAILED
            if obj:
                return HTTPStatus.NOT_MODIFIED
    return None


def _conditional(handler, target, read: bool):
    """`handler`, answering 412 / 304 first where the request's preconditions do not hold."""

    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        # Read the body first (closing the connection on an unread one resets it); make an empty
        # one b"" (the package fails on empty media uploads, which TensorStore makes: len(None)).
        if not read and request.data is None:
            request._data = b""
        bucket, name = target(request, storage)
        try:
            obj = storage.get_file_obj(bucket, name)
        except NotFound:
            obj = None
        response.status = _failed_precondition(request.query, obj, read) or HTTPStatus.OK
        if response.status == HTTPStatus.PRECONDITION_FAILED:
            message = "At least one of the pre-conditions you specified did not hold."
            error = {"domain": "global", "reason": "conditionNotMet", "message": message}
            response.json({"error": {"code": 412, "message": message, "errors": [error]}})
        if response.status != HTTPStatus.OK:
            return
        handler(request, response, storage, *args, **kwargs)
        if read and obj and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])

    return wrapped


def _with_offsets(handler):
    """`objects.ls`, keeping only the objects in [startOffset, endOffset) (not the prefixes)."""

    @functools.wraps(handler)
    def wrapped(request, response, storage, *args, **kwargs):
        handler(request, response, storage, *args, **kwargs)
        start = request.query.get("startOffset", [""])[0]
        end = request.query.get("endOffset", [None])[0]
        if response.status != HTTPStatus.OK or not (start or end):
            return
        listing = json.loads(response._content)
        in_range = lambda name: start <= name and (end is None or name < end)
        listing["items"] = [item for item in listing["items"] if in_range(item["name"])]
        response.json(listing)

    return wrapped


def install() -> None:
    """Patches the package's routes (`server.HANDLERS`, and `objects.insert`, to which the router
    falls back for uploads posted without the /upload prefix). Idempotent."""
    if getattr(objects.insert, "_honours_preconditions", False):
        return
    replacements = {
        objects.insert: _conditional(objects.insert, _upload, read=False),
        objects.upload_partial: _conditional(objects.upload_partial, _upload, read=False),
        objects.get: _conditional(objects.get, _object, read=True),
        objects.download: _conditional(objects.download, _object, read=True),
        objects.delete: _conditional(objects.delete, _object, read=False),
        objects.patch: _conditional(objects.patch, _object, read=False),
        objects.compose: _conditional(objects.compose, _object, read=False),
        objects.copy: _conditional(objects.copy, _destination, read=False),
        objects.rewrite: _conditional(objects.rewrite, _destination, read=False),
        objects.ls: _with_offsets(objects.ls),
    }
    server.HANDLERS = tuple(
        (regex, {method: replacements.get(h, h) for method, h in handlers.items()})
        for regex, handlers in server.HANDLERS
    )
    objects.insert = replacements[objects.insert]
    objects.insert._honours_preconditions = True


class _HTTPServer(HTTPServer):
    request_queue_size = 128  # Clients open many connections at once; 5 would drop some.


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="In-memory GCS emulator on 127.0.0.1.")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bucket", action="append", default=[], help="bucket to create")
    args = parser.parse_args(argv)
    install()
    storage = Storage(use_memory_fs=True)
    for bucket in args.bucket:
        buckets.create_bucket(bucket, storage)
    httpd = _HTTPServer(("127.0.0.1", args.port), functools.partial(server.RequestHandler, storage))
    for stop in (signal.SIGTERM, signal.SIGINT):  # (SIGINT is ignored in background jobs)
        signal.signal(stop, lambda *_: sys.exit(0))
    print("ready", flush=True)
    try:
        httpd.serve_forever()
    finally:
        httpd.server_close()


@dataclasses.dataclass(frozen=True)
class Emulator:
    url: str
    env: dict[str, str]
    bucket: str
    pid: int = 0

    def pause(self) -> None:
        """Stops answering (SIGSTOP): connections are accepted by the kernel, never served."""
        os.kill(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Answers again (SIGCONT), with everything it held."""
        os.kill(self.pid, signal.SIGCONT)


@contextlib.contextmanager
def running(bucket: str = "test-bucket", timeout: float = 30.0) -> Iterator[Emulator]:
    """Runs the emulator in a subprocess on a free localhost port, with `bucket` created."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, os.path.abspath(__file__), "--port", str(port), "--bucket", bucket]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        # pread: the child shares the file offset, so neither seek nor read.
        output = lambda: os.pread(log.fileno(), 1 << 20, 0).decode(errors="replace")
        try:
            deadline = time.monotonic() + timeout
            while "ready\n" not in output():
                if proc.poll() is not None:
                    raise RuntimeError(f"GCS emulator exited ({proc.returncode}):\n{output()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"GCS emulator not ready in {timeout} s:\n{output()}")
                time.sleep(0.05)
            yield Emulator(url=url, env=ENV_VARS(url), bucket=bucket, pid=proc.pid)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)  # (a paused one cannot act on SIGTERM)
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
