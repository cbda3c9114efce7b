"""The GCS emulator of tests/gcs_emulator.py honours generation preconditions, as real GCS does."""

import json
import os
import subprocess
import sys

import pytest
from google.api_core.exceptions import NotModified, PreconditionFailed
from google.cloud import storage

from tests.gcs_emulator import running


@pytest.fixture(scope="module")
def emulator():
    with running() as emu, pytest.MonkeyPatch.context() as mp:
        for name, value in emu.env.items():
            mp.setenv(name, value)
        yield emu


@pytest.fixture(scope="module")
def bucket(emulator):
    # No project or credentials: with STORAGE_EMULATOR_HOST set the client is anonymous.
    return storage.Client().bucket(emulator.bucket)


def test_if_generation_match_zero_creates_only_once(bucket):
    bucket.blob("once").upload_from_string(b"first", if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob("once").upload_from_string(b"second", if_generation_match=0)
    assert bucket.blob("once").download_as_bytes() == b"first"


def test_if_generation_match_current_or_stale(bucket):
    blob = bucket.blob("versioned")
    blob.upload_from_string(b"v1")
    first = blob.generation
    blob.upload_from_string(b"v2", if_generation_match=first)
    assert blob.generation != first
    with pytest.raises(PreconditionFailed):
        bucket.blob("versioned").upload_from_string(b"v3", if_generation_match=first)
    assert bucket.blob("versioned").download_as_bytes() == b"v2"


def test_resumable_upload_carries_the_precondition(bucket):
    data = os.urandom(600 * 1024)  # Three chunks: the condition is on the initial request only.
    bucket.blob("big", chunk_size=256 * 1024).upload_from_string(data, if_generation_match=0)
    with pytest.raises(PreconditionFailed):
        bucket.blob("big", chunk_size=256 * 1024).upload_from_string(b"x", if_generation_match=0)
    assert bucket.blob("big").download_as_bytes() == data


def test_read_and_delete_preconditions(bucket):
    blob = bucket.blob("conditional")
    blob.upload_from_string(b"v1")
    stale = blob.generation
    blob.upload_from_string(b"v2")
    current = blob.generation
    with pytest.raises(PreconditionFailed):
        bucket.blob("conditional").download_as_bytes(if_generation_match=stale)
    assert bucket.blob("conditional").download_as_bytes(if_generation_match=current) == b"v2"
    with pytest.raises(NotModified):
        bucket.blob("conditional").reload(if_generation_not_match=current)
    with pytest.raises(PreconditionFailed):
        bucket.blob("conditional").delete(if_generation_match=stale)
    bucket.blob("conditional").delete(if_generation_match=current)
    assert not bucket.blob("conditional").exists()


# TensorStore and gcsfs read their environment once per process (the auth provider, the gcsfs
# class at import), so they run in a fresh one, with nothing but ENV_VARS to point them here.
CLIENTS = """
import json, sys
import fsspec, numpy as np, tensorstore as ts

bucket = sys.argv[1]
kv = ts.KvStore.open({"driver": "gcs", "bucket": bucket, "path": "kv/"}).result()
absent = kv.read("key").result().stamp.generation
first = kv.write("key", b"first", if_equal=absent).result().generation
again = kv.write("key", b"again", if_equal=absent).result().generation
second = kv.write("key", b"second", if_equal=first).result().generation
stale = kv.write("key", b"stale", if_equal=first).result().generation
ranged = kv.read("key", byte_range=slice(1, 3)).result()
for key in "abcd":
    kv.write(key, b"").result()

spec = {"driver": "zarr3", "kvstore": {"driver": "ocdbt", "base": f"gs://{bucket}/ocdbt/"}}
metadata = {"shape": [8], "data_type": "int32"}
array = ts.open({**spec, "metadata": metadata, "create": True}).result()
array.write(np.arange(8, dtype=np.int32)).result()
ts.open(spec).result()[2:4].write(0).result()

print(json.dumps({
    "written": [bool(first), again == b"", bool(second), stale == b""],
    "value": kv.read("key").result().value.decode(),
    "ranged": [ranged.value.decode(), ranged.stamp.generation == second],
    "unchanged": kv.read("key", if_not_equal=second).result().state,
    "range_listed": sorted(k.decode() for k in kv.list(ts.KvStore.KeyRange("b", "d")).result()),
    "ocdbt": ts.open(spec).result().read().result().tolist(),
    "gcsfs": fsspec.filesystem("gs").cat(f"{bucket}/kv/key").decode(),
}))
"""


def test_tensorstore_and_gcsfs(emulator):
    env = {**os.environ, **emulator.env}
    result = subprocess.run(
        [sys.executable, "-c", CLIENTS, emulator.bucket],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {
        "written": [True, True, True, True],  # Created, refused, replaced, refused.
        "value": "second",
        "ranged": ["ec", True],  # Its generation comes from the x-goog-generation header.
        "unchanged": "unspecified",  # 304 Not Modified.
        "range_listed": ["b", "c"],
        "ocdbt": [0, 1, 0, 0, 4, 5, 6, 7],
        "gcsfs": "second",
    }
